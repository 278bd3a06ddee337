/* libtpar: the core shared by the tpar CLI, the tpar-worker and the Trio
 * extension.  Sans-I/O where it can be: the frame codec never reads or
 * writes an fd; the process helpers spawn, signal and reap, and never wait
 * on their own.  No event loop and no Python inside.
 *
 * Errors: functions return 0 (or a count) on success and -errno or one of
 * the TPAR_E* codes below on failure. */
#ifndef TPAR_H
#define TPAR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ errors */

/* Our own codes sit far from errno, as libuv's do. */
#define TPAR_ERRNO_MAP(X)                                                     \
    X(TOOBIG, -7001, "frame longer than the limit")                           \
    X(BADFRAME, -7002, "malformed frame")                                     \
    X(TRUNCATED, -7003, "stream ended inside a frame")                        \
    X(BADJSON, -7004, "invalid JSON")                                         \
    X(AUTH, -7005, "authentication failed")                                   \
    X(PROTO, -7006, "protocol error")

enum {
#define TPAR__ERR_ENUM(name, code, msg) TPAR_E##name = (code),
    TPAR_ERRNO_MAP(TPAR__ERR_ENUM)
#undef TPAR__ERR_ENUM
};

/* A static message for a TPAR_E* code or a negated errno. */
const char *tpar_strerror(int err);

/* ------------------------------------------------------------------ frames */

/* Every frame is an 8-byte header, then `len` payload bytes:
 *   u32 len (little endian) | u8 kind | u8 status | u16 zero
 * A worker handles the jobs it is sent strictly in order, one result frame
 * per job frame, so a parent may pipeline several jobs to one worker. */
#define TPAR_FRAME_HEADER 8
#define TPAR_FRAME_MAX_DEFAULT ((size_t)1 << 30) /* 1 GiB */

enum tpar_frame_kind {
    TPAR_FRAME_READY = 1,      /* w->p: initialised; payload: u32 pid (LE) */
    TPAR_FRAME_JOB_JSON = 2,   /* p->w: "mod:fn" NUL args-JSON NUL kwargs-JSON */
    TPAR_FRAME_JOB_PICKLE = 3, /* p->w: pickle of (fn, args, kwargs) */
    TPAR_FRAME_RESULT = 4,     /* w->p: status below; payload: f64 duration (LE)
                                  then the body: JSON text for JSON jobs, a
                                  pickle for pickle jobs */
    TPAR_FRAME_CONFIG = 5,     /* p->w: pickle of (init, retire); before any job */
    TPAR_FRAME_SHUTDOWN = 6,   /* p->w: finish the queued jobs, then exit 0 */
    TPAR_FRAME_AUTH = 7,       /* both ways, before any other frame on a
                                  socket: the handshake (tpar_auth below) */
    TPAR_FRAME_TAKEBACK = 8,   /* p->w: u64 n (LE), the job frames sent before
                                  this one: give back those not started */
    TPAR_FRAME_GIVEBACK = 9,   /* w->p: u64 from, u64 to (LE): the job frames
                                  from..to-1 never started and never will */
    TPAR_FRAME_EXTRA = 10,     /* w->p, right before a JSON job's RESULT, only
                                  when asked (tpar-worker --capture, --stats):
                                  JSON object members without the braces, for
                                  the job's record; status: TPAR_EXTRA_* */
};

/* Status byte of a TPAR_FRAME_EXTRA. */
enum tpar_extra_kind {
    TPAR_EXTRA_STATS = 1,  /* "cpu_user":s,"cpu_sys":s,"max_rss":bytes */
    TPAR_EXTRA_OUTPUT = 2, /* "stdout":"..","stderr":"..","output_cut":bool */
};

/* Status byte of a TPAR_FRAME_RESULT. */
enum tpar_result_status {
    TPAR_RESULT_OK = 0,    /* body: the value */
    TPAR_RESULT_ERROR = 1, /* JSON body: {"type","message","traceback"};
                              pickle body: (exception or None, type name,
                              message, traceback text, chain) */
    TPAR_RESULT_RETIRED = 2, /* answers no job, empty body: the worker's
                                retire() returned true after its previous
                                result; a job sent since was not run (sent
                                with RETIRING; the worker exits 0) */
};
/* Flag or'ed into the status byte: the worker retires after this result
 * (its retire() returned true, or its task limit was reached). */
#define TPAR_RESULT_RETIRING 0x80
/* The status byte without its flags: a tpar_result_status. */
#define TPAR_RESULT_STATUS_MASK 0x7f
/* Status byte of a JOB_JSON / JOB_PICKLE frame: write the results you hold
 * before starting this job (the CLI uses it to know which job killed a
 * worker).  A worker that honours it sets this bit in READY's status. */
#define TPAR_JOB_FLUSH_FIRST 0x01
#define TPAR_READY_FLUSH_FIRST 0x01
/* READY status bits: the worker answers TAKEBACK with GIVEBACK (even while
 * a job runs), and publishes its progress in its up lane (below). */
#define TPAR_READY_TAKEBACK 0x02
#define TPAR_READY_PROGRESS 0x04


/* Flag in a header's byte 6 (zero otherwise): the payload is not on the
 * pipe but in the sender's lane (below); only the 8-byte header travels. */
#define TPAR_FRAME_IN_LANE 0x01

typedef struct tpar_frame {
    uint8_t kind;
    uint8_t status;
    uint8_t flags;          /* TPAR_FRAME_IN_LANE or 0 */
    uint32_t len;
    const uint8_t *payload; /* valid until the next call on its decoder;
                               NULL for an IN_LANE frame (see tpar_lane_view) */
} tpar_frame;

/* The f64 (little endian) at p: a RESULT's duration. */
double tpar_get_f64le(const uint8_t *p);

/* Writes the 8-byte header of a frame into out. */
void tpar_frame_header(uint8_t out[TPAR_FRAME_HEADER], uint8_t kind,
                       uint8_t status, uint32_t len);
/* The same with flags (TPAR_FRAME_IN_LANE) in byte 6. */
void tpar_frame_header_flags(uint8_t out[TPAR_FRAME_HEADER], uint8_t kind,
                             uint8_t status, uint8_t flags, uint32_t len);

/* Incremental frame decoder: accepts any split of the byte stream.  Every
 * length is checked against max_len before anything is allocated. */
typedef struct tpar_decoder {
    size_t max_len;                    /* largest payload accepted */
    uint8_t hdr[TPAR_FRAME_HEADER];    /* partial header */
    size_t hdr_have;                   /* header bytes held */
    uint8_t *buf;                      /* partial payload, owned */
    size_t buf_cap;                    /* allocated size of buf */
    size_t have;                       /* payload bytes held in buf */
    uint32_t want;                     /* payload length of current frame */
    int in_payload;                    /* header complete, payload pending */
} tpar_decoder;

void tpar_decoder_init(tpar_decoder *d, size_t max_len);
void tpar_decoder_free(tpar_decoder *d); /* frees buffers; d may be reused */

/* Consumes bytes from data[0..len) up to the end of the first complete
 * frame.  Returns the number of bytes consumed (>= 0) and sets *got to 1
 * with *frame filled when a frame completed (its payload points into data
 * when the frame lay whole inside it, else into the decoder's buffer), or
 * 0 when all of data was consumed without completing one.  Returns
 * TPAR_ETOOBIG / TPAR_EBADFRAME / -ENOMEM on failure; the decoder is then
 * unusable until tpar_decoder_free. */
ptrdiff_t tpar_decoder_feed(tpar_decoder *d, const uint8_t *data, size_t len,
                            tpar_frame *frame, int *got);

/* For large payloads, to read() straight into the decoder instead of
 * through a buffer of the caller's: when the decoder is inside a payload
 * (after a feed that gave part of one), sets *dst to where the rest goes
 * and returns how many bytes are still wanted; else returns 0.  After
 * reading n (<= that) bytes there, tpar_decoder_commit says whether the
 * frame is complete (1, *frame filled) or not (0). */
size_t tpar_decoder_room(tpar_decoder *d, uint8_t **dst);
int tpar_decoder_commit(tpar_decoder *d, size_t n, tpar_frame *frame);

/* Frees the payload buffer unless a payload is being read into it (the
 * last frame's payload is then gone).  feed() does it itself after a
 * frame larger than TPAR_LANE_MIN, so that one large inline frame does not
 * pin its size for good. */
void tpar_decoder_shrink(tpar_decoder *d);

/* True when the decoder holds part of a frame (so EOF now is TRUNCATED). */
int tpar_decoder_partial(const tpar_decoder *d);

/* ------------------------------------------------------------------ buffers */

/* A growable byte buffer; zero-initialised is empty.  Consuming from the
 * front is O(1): data moves forward inside the allocation, and the bytes
 * are moved back only when an append needs the room, so writing a large
 * frame out in pipe-sized steps never copies the rest again and again. */
typedef struct tpar_buf {
    uint8_t *data; /* the first byte held */
    size_t len;    /* bytes held */
    size_t cap;    /* bytes available from data on */
    uint8_t *base; /* the allocation */
} tpar_buf;

int tpar_buf_reserve(tpar_buf *b, size_t extra); /* 0 or -ENOMEM */
int tpar_buf_append(tpar_buf *b, const void *p, size_t n);
/* Appends a header and payload as one frame. */
int tpar_buf_frame(tpar_buf *b, uint8_t kind, uint8_t status, const void *p,
                   size_t n);
void tpar_buf_consume(tpar_buf *b, size_t n); /* drops the first n bytes, O(1) */
void tpar_buf_free(tpar_buf *b);

/* Take-back (docs/protocol.md, "Taking back queued jobs").  Job frames
 * (JOB_JSON, JOB_PICKLE) are numbered 0, 1, 2, ... in the order the parent
 * sends them, on both sides.  TAKEBACK carries n, the number of job frames
 * sent before it.  The worker answers with exactly one GIVEBACK(from, to),
 * to == n: jobs from..to-1 never started and never will (none when from ==
 * to); every job before `from` started, or was given back by an earlier
 * GIVEBACK, and gets its RESULT as usual (possibly after the GIVEBACK).
 * Jobs sent after the TAKEBACK are not affected. */
int tpar_buf_takeback(tpar_buf *b, uint64_t n);
int tpar_buf_giveback(tpar_buf *b, uint64_t from, uint64_t to);
/* Decode a frame of that kind: 0, or TPAR_EBADFRAME (wrong kind, length,
 * or from > to). */
int tpar_takeback_parse(const tpar_frame *f, uint64_t *n);
int tpar_giveback_parse(const tpar_frame *f, uint64_t *from, uint64_t *to);

/* u64 little endian. */
uint64_t tpar_get_u64le(const uint8_t *p);
void tpar_put_u64le(uint8_t *p, uint64_t v);

/* ------------------------------------------------------------------- lanes */

/* A lane carries large frame payloads past the pipe: a memfd that both
 * processes map, one per direction per worker (the parent writes the
 * "down" lane, the worker the "up" lane).  The writer fills it and sends
 * only a header flagged TPAR_FRAME_IN_LANE; the reader uses the payload in
 * place and hands the lane back.  One payload at a time: a writer that
 * finds its lane still held sends inline, as always, so nothing waits.
 * The pages stay between transfers (a warm copy costs a fraction of a
 * fresh one) until the worker, idle, trims both lanes.
 *
 * Ownership is one word in the lane's first page, changed only by
 * compare-and-swap: FREE -> WRITING (writer) -> FULL (writer) -> FREE
 * (reader), and FREE -> TRIM -> FREE (whoever trims).  Nobody touches the
 * data except its owner, so a lane shrunk under an old mapping is never
 * read past its end. */
#define TPAR_LANE_MIN ((size_t)256 * 1024) /* smaller payloads use the pipe */
#define TPAR_LANE_HDR ((size_t)4096)      /* the state word's page */

typedef struct tpar_lane {
    int fd;          /* the memfd (O_CLOEXEC), or -1: no lane */
    uint8_t *map;    /* our mapping of its first map_len bytes, or NULL */
    size_t map_len;
    size_t size;     /* writer: the file's size while we hold it */
} tpar_lane;

/* A lane with no memfd: every payload goes inline. */
#define TPAR_LANE_NONE {-1, NULL, 0, 0}

int tpar_lane_create(tpar_lane *l);       /* a fresh, empty lane; -errno */
void tpar_lane_adopt(tpar_lane *l, int fd); /* takes fd (-1: none) */
void tpar_lane_close(tpar_lane *l);       /* unmaps, closes; idempotent */

/* Writer.  claim: 1 when the lane is ours to fill, 0 when it is held (or
 * absent), -errno on failure.  reserve: makes room for len payload bytes
 * and sets *data to where they go (it may move between calls).  Then
 * publish (the payload is ready: send the IN_LANE header now) or abort. */
int tpar_lane_claim(tpar_lane *l);
int tpar_lane_reserve(tpar_lane *l, size_t len, uint8_t **data);
void tpar_lane_publish(tpar_lane *l);
void tpar_lane_abort(tpar_lane *l);

/* claim, reserve, copy n bytes from p, publish: 1 when the payload is now
 * in the lane (send the IN_LANE header), 0 when it must go inline (the
 * lane is held, absent, or could not grow; it is left as it was). */
int tpar_lane_put(tpar_lane *l, const void *p, size_t n);

/* Reader, on an IN_LANE frame: *data = its len payload bytes, valid until
 * tpar_lane_done.  TPAR_EBADFRAME when the writer did not publish one. */
int tpar_lane_view(tpar_lane *l, size_t len, const uint8_t **data);
void tpar_lane_done(tpar_lane *l);

/* Progress: a worker with lanes publishes, in its up lane's state page,
 * how far it got through its job frames (numbered as for TAKEBACK):
 * started = 1 + the index of the last job it started, finished = 1 + the
 * index of the last job whose call returned (its result may still be held
 * in the worker).  They survive the worker: after its death the parent
 * reads them to know which job was running (finished <= i < started: at
 * most one, started - 1), which ran to the end with their results lost
 * (i < finished) and which never started (i >= started).  The worker
 * stores them (release) before the call starts and after it returns.
 * set: the worker; 0, or -errno when the lane cannot be mapped (or is
 * absent: -ENOENT).  get: the parent; the same errors. */
int tpar_lane_progress_set(tpar_lane *l, uint64_t started, uint64_t finished);
int tpar_lane_progress_get(tpar_lane *l, uint64_t *started, uint64_t *finished);

/* Doorbell: the parent rings its down lane's doorbell right after it
 * queues a TAKEBACK; a worker checks it before each job (one atomic load)
 * and, when it rang, reads its input at once.  Then a TAKEBACK overtakes
 * a batch of short jobs the worker has already read, instead of waiting
 * behind them.  ring: 0, or -errno (-ENOENT: no lane).  rang: 1 when it
 * rang since *seen (updated), else 0. */
int tpar_lane_ring(tpar_lane *l);
int tpar_lane_rang(tpar_lane *l, uint64_t *seen);

/* Gives the lane's pages back when nobody holds it: 1 when trimmed, 0 when
 * it was already small, -EBUSY when held, -errno on failure. */
int tpar_lane_trim(tpar_lane *l);

/* ------------------------------------------------------------------- links */

/* The parent's side of the channel to one worker, sans I/O (nghttp2's
 * session, not its socket): it encodes the frames the parent sends,
 * choosing the down lane for a large payload when the lane is free and
 * inline otherwise; it decodes the worker's bytes into events (READY,
 * RESULT), viewing a result in the up lane and handing the lane back; and
 * it knows the jobs in flight on that worker, oldest (the running one)
 * first, each as a token of the caller's.
 *
 * It never reads, writes or closes an fd and knows nothing of processes.
 * The driver reads from its transport and feeds the bytes in
 * (tpar_link_feed, or tpar_link_room + tpar_link_commit to read a large
 * frame straight into place), and writes what tpar_link_pending shows
 * whenever the transport takes it (tpar_link_written).  Transports: a pipe
 * pair with lanes (spawned or forked workers: the lanes of their
 * tpar_proc), or one connected socket without lanes (lanes NULL): every
 * payload then travels inline. */
#define TPAR_LINK_DEPTH 256 /* jobs in flight on one worker, at most */

typedef struct tpar_link {
    tpar_decoder dec;
    tpar_buf out;                /* frame bytes not yet written */
    const uint8_t *lent;         /* then these: a lent payload's unwritten */
    size_t lent_len;             /* bytes (tpar_link_send_lent) */
    tpar_lane *down, *up;        /* the transport's lanes, or NULL */
    void *jobs[TPAR_LINK_DEPTH]; /* tokens of the jobs in flight, a ring */
    uint64_t nums[TPAR_LINK_DEPTH]; /* and their job frames' numbers */
    unsigned head, njobs;        /* the oldest, and how many */
    uint64_t sent;               /* job frames sent in its life: the next
                                    one's number (TAKEBACK numbering) */
    int takeback_pending;        /* a TAKEBACK queued, its GIVEBACK not seen */
    int bell_due;                /* ring the down lane's doorbell once the
                                    TAKEBACK is written */
    int ready;                   /* READY has come */
    uint8_t ready_flags;         /* its status byte: TPAR_READY_* */
    int retiring;                /* a RESULT said TPAR_RESULT_RETIRING */
    int lane_held;               /* a result's body is in the up lane */
    const char *error;           /* after TPAR_EPROTO: what was wrong */
} tpar_link;

enum tpar_link_event_type {
    TPAR_LINK_NONE = 0,   /* no event yet: feed more */
    TPAR_LINK_READY,      /* status: READY's flags (TPAR_READY_*) */
    TPAR_LINK_RESULT,     /* the oldest job in flight ended */
    TPAR_LINK_EXTRA,      /* an EXTRA frame for the oldest job in flight
                             (job; status: TPAR_EXTRA_*; body, len) */
    TPAR_LINK_GIVEBACK,   /* the answer to tpar_link_take_back: the newest
                             `count` jobs in flight never started and never
                             will; take them with tpar_link_take_newest */
};

typedef struct tpar_link_event {
    int type;             /* enum tpar_link_event_type */
    int status;           /* RESULT: tpar_result_status; READY: its flags */
    int retiring;         /* RESULT: the worker exits after this one */
    int in_lane;          /* RESULT: body is in the up lane: call
                             tpar_link_lane_done once it is not needed */
    double duration;      /* RESULT: seconds the worker spent on the job */
    const uint8_t *body;  /* RESULT: the value or error; valid until the
                             next feed, or in the lane until lane_done */
    size_t len;
    void *job;            /* RESULT: the job's token, as sent (NULL for a
                             RETIRED notice sent with no job in flight) */
    unsigned count;       /* GIVEBACK: how many jobs came back */
    uint32_t pid;         /* READY: the worker's pid (on its node), 0 if
                             the frame did not say */
} tpar_link_event;

/* A link over a transport whose lanes are down and up (NULL: none; a
 * lane with fd -1 is none too).  tpar_link_free frees its buffers (it
 * closes nothing); the link may be initialised again. */
void tpar_link_init(tpar_link *l, tpar_lane *down, tpar_lane *up);
void tpar_link_free(tpar_link *l);

/* Queues a frame of n payload bytes at p: through the down lane when
 * n >= TPAR_LANE_MIN and the lane is free, else inline.  A job frame
 * (JOB_JSON, JOB_PICKLE) joins the jobs in flight with its token `job`;
 * status is the frame's status byte (TPAR_JOB_FLUSH_FIRST).  On failure
 * nothing is queued and the lane is as it was: -ENOMEM, TPAR_ETOOBIG,
 * -ENOSPC (TPAR_LINK_DEPTH jobs in flight already). */
int tpar_link_send(tpar_link *l, uint8_t kind, uint8_t status, const void *p, size_t n,
                   void *job);
/* As tpar_link_send, but an inline payload is lent, not copied: the link
 * points at p, which must stay valid and unchanged until tpar_link_keep
 * or until nothing is pending.  The driver writes header and payload with
 * one writev (tpar_link_pending_iov) and calls tpar_link_keep before p
 * goes away: only the bytes the transport did not take are copied then.
 * Room for them is reserved here (address space, touched only by that
 * copy), so tpar_link_keep cannot fail.  A payload that takes the lane is
 * copied into the lane as by tpar_link_send. */
int tpar_link_send_lent(tpar_link *l, uint8_t kind, uint8_t status, const void *p, size_t n,
                        void *job);
/* Copies the unwritten bytes of a lent payload into the link's buffer;
 * no-op when none is lent.  Every other send keeps first. */
void tpar_link_keep(tpar_link *l);
/* The same for a payload of n bytes that the caller has published in the
 * down lane itself (tpar_lane_claim/reserve/publish): only its header is
 * queued.  On failure the lane is given back (aborted). */
int tpar_link_send_in_lane(tpar_link *l, uint8_t kind, uint8_t status, size_t n, void *job);

/* Asks the worker for the jobs it holds but has not started: queues a
 * TAKEBACK and, once it is written, rings the down lane's doorbell (so it
 * overtakes a batch the worker has read).  Its GIVEBACK event says how
 * many came back.  1 when queued; 0 when there is nothing to ask (no job
 * in flight, one already pending, or the worker did not say
 * TPAR_READY_TAKEBACK); -ENOMEM. */
int tpar_link_take_back(tpar_link *l);

/* A worker's progress (TPAR_READY_PROGRESS), which survives it in its up
 * lane: read after its death, before the lanes close.  0, or -ENOENT
 * (none: no lane, or it does not publish), -errno. */
int tpar_link_progress(tpar_link *l, uint64_t *started, uint64_t *finished);

/* What the transport should take next: *data and the byte count (0:
 * nothing to write; with a payload lent, the buffer's bytes, then the
 * payload's).  tpar_link_pending_iov fills iov[0..2) with all of it and
 * returns how many are used (0: nothing).  tpar_link_written drops the
 * first n bytes of what is pending; tpar_link_pending_bytes counts it. */
size_t tpar_link_pending(const tpar_link *l, const uint8_t **data);
int tpar_link_pending_iov(const tpar_link *l, struct iovec iov[2]);
size_t tpar_link_pending_bytes(const tpar_link *l);
void tpar_link_written(tpar_link *l, size_t n);

/* Decodes data[0..n) as read from the worker, up to the end of the first
 * event: returns the bytes consumed, with *ev filled (type NONE when none
 * completed: all n were consumed).  A RESULT takes the oldest job off the
 * jobs in flight.  Fails with a decoder error (TPAR_EBADFRAME,
 * TPAR_ETOOBIG, -ENOMEM) or TPAR_EPROTO (l->error says what: a result
 * without a job, a short one, a lane frame with nothing in the lane, an
 * unknown kind); the link is then unusable.  No event comes from a
 * failed call. */
ptrdiff_t tpar_link_feed(tpar_link *l, const uint8_t *data, size_t n, tpar_link_event *ev);
/* To read the rest of a large frame straight into place: as
 * tpar_decoder_room; after reading n bytes there, commit returns 0 (no
 * event yet, or *ev filled) or fails as feed does. */
size_t tpar_link_room(tpar_link *l, uint8_t **dst);
int tpar_link_commit(tpar_link *l, size_t n, tpar_link_event *ev);
/* The last in-lane result's body is no longer needed: the worker may use
 * the up lane again.  No-op when none is held. */
void tpar_link_lane_done(tpar_link *l);
/* True when the worker's bytes stopped inside a frame (EOF now would be
 * TPAR_ETRUNCATED). */
int tpar_link_partial(const tpar_link *l);

/* The jobs in flight: how many; the i-th oldest token (i < count) and its
 * job frame's number; taking the oldest or the newest off (NULL when
 * none), after a GIVEBACK or the worker's death. */
unsigned tpar_link_inflight(const tpar_link *l);
void *tpar_link_job(const tpar_link *l, unsigned i);
uint64_t tpar_link_job_number(const tpar_link *l, unsigned i);
void *tpar_link_take_oldest(tpar_link *l);
void *tpar_link_take_newest(tpar_link *l);

/* ---------------------------------------------------------------- processes */

/* The worker reads frames on fd 3 and writes frames on fd 4; it moves both
 * to high fds before any Python code runs and points fd 1 at fd 2.  Fds 5
 * and 6, when open, are its down and up lanes. */
#define TPAR_WORKER_FD_IN 3
#define TPAR_WORKER_FD_OUT 4
#define TPAR_WORKER_FD_DOWN 5
#define TPAR_WORKER_FD_UP 6

struct tpar_zygote;

typedef struct tpar_proc {
    pid_t pid;    /* also the worker's process-group id */
    int to_fd;    /* parent writes frames here; O_CLOEXEC|O_NONBLOCK */
    int from_fd;  /* parent reads frames here; O_CLOEXEC|O_NONBLOCK */
    int reaped;   /* its exit status is known */
    int status;   /* wait status once reaped */
    struct tpar_zygote *zygote; /* the forkserver it came from, or NULL */
    unsigned zygote_gen;        /* which incarnation of that forkserver */
    int32_t zygote_tag;         /* its fork request's tag: its exit report's key */
    tpar_lane down, up;         /* large payloads to and from it */
} tpar_proc;

/* Starts `argv[0]` (a path, not searched on PATH) with envp (NULL: the
 * caller's environ) as a new process-group leader with default signal
 * dispositions and an empty mask, stdin /dev/null, stdout and stderr
 * inherited, fd 3/4 the job pipes, and every other fd closed.  On failure *p is untouched, no process
 * is left behind and -errno is returned (-ENOENT/-EACCES for a bad exe). */
int tpar_proc_spawn(tpar_proc *p, char *const argv[], char *const envp[]);

/* Sends sig to the worker's whole process group (so processes the job
 * started die too) and to the worker itself.  No-op once reaped. */
void tpar_proc_kill(tpar_proc *p, int sig);

/* Collects the exit status: blocking when `block`, else returns -EAGAIN if
 * it is still running.  Only ever waits for p->pid.  Closes neither fd. */
int tpar_proc_reap(tpar_proc *p, int block);

/* Closes both fds and both lanes (idempotent). */
void tpar_proc_close(tpar_proc *p);

/* -------------------------------------------------------------- forkserver */

/* A zygote: a `tpar-worker --zygote` that has initialised Python once (and
 * imported its --preload modules) and forks a ready worker per request.
 * The job pipes travel to it by SCM_RIGHTS over a SOCK_SEQPACKET
 * socketpair: no path on disk.  It reports each child's exit status, so
 * tpar_proc_reap works on its workers as on spawned ones.  It dies with its
 * parent (EOF on the socket, or --pdeathsig); its workers die with it. */
typedef struct tpar_zygote {
    pid_t pid;         /* the zygote process, 0 when not running */
    int fd;            /* control socket; O_CLOEXEC */
    unsigned gen;      /* bumped at each (re)start */
    int reaped, status;
    struct tpar__exit { int32_t tag; int status; } *exits; /* reports not yet claimed */
    size_t nexits, cap_exits;
    int32_t next_tag;  /* the last fork request's tag: per zygote, so its
                          own lock guards it (threads in the extension) */
    size_t nlive;      /* workers forked and not yet reaped: a report each,
                          so exits has room for them all before a fork */
} tpar_zygote;

/* Starts the zygote: argv[0] is the tpar-worker path, argv must contain
 * "--zygote".  A zeroed z is "not started".  On failure -errno, nothing
 * is left running.  If a previous incarnation runs, it is ended first. */
int tpar_zygote_start(tpar_zygote *z, char *const argv[], char *const envp[]);

/* Forks a worker from the zygote and fills *p as tpar_proc_spawn does,
 * blocking until the zygote says the fork's pid (about a millisecond).
 * -EPIPE when the zygote is gone: restart it and try again. */
int tpar_zygote_fork(tpar_zygote *z, tpar_proc *p);

/* Forks a worker as tpar_zygote_fork does, starting the zygote with argv
 * and envp first when it is not running, and once more when the fork
 * finds it gone (it died since: its workers are gone too), unless it was
 * started by this very call (then it dies at its start: a --preload that
 * fails, and so would the next).  -EPIPE when
 * the second one is gone as well; other errors as tpar_zygote_start /
 * tpar_zygote_fork.  The one policy both front ends follow. */
int tpar_zygote_spawn(tpar_zygote *z, char *const argv[], char *const envp[], tpar_proc *p);

/* Ends the zygote (SIGKILL after closing its socket) and reaps it; its
 * workers die with it.  Forgets pending reports.  Idempotent. */
void tpar_zygote_stop(tpar_zygote *z);

/* ---------------------------------------------------------- remote workers
 *
 * A remote worker (`tpar-worker --connect HOST:PORT`) dials its parent over
 * TCP, and before any other frame both sides prove that they know the run's
 * secret: a mutual challenge-response with HMAC-SHA256 (libsodium), so
 * neither unpickles anything from an unauthenticated peer.  Three AUTH
 * frames, each of a fixed size (the status byte says which step):
 *
 *   CHALLENGE  p->w  Np (32 random bytes)
 *   RESPONSE   w->p  Nw (32 random bytes) | HMAC(K, "tpar-auth-1 worker" | Np | Nw)
 *   PROOF      p->w  HMAC(K, "tpar-auth-1 parent" | Np | Nw)
 *
 * The worker proves first; the parent sends its proof only to a worker that
 * proved, and checks the response in constant time.  The labels keep one
 * side's answer from serving as the other's; the fresh nonces keep an old
 * answer from serving again.  Then the worker says READY and the frames
 * are those of a pipe worker, inline (no lanes).  This authenticates; it
 * does not encrypt: the frames travel in clear on the cluster's network.
 *
 * The secret is TPAR_SECRET_LEN random bytes, fresh for each run, passed
 * to the workers as 64 hex digits in the environment variable
 * TPAR_SECRET_ENV (srun forwards it), never on a command line. */
#define TPAR_SECRET_LEN 32
#define TPAR_SECRET_HEX (2 * TPAR_SECRET_LEN)
#define TPAR_SECRET_ENV "TPAR_SECRET"
#define TPAR_AUTH_MAC_LEN 32
#define TPAR_AUTH_NONCE_LEN 32
#define TPAR_AUTH_FRAME_MAX 64 /* the largest AUTH payload (RESPONSE) */

enum tpar_auth_step { /* the status byte of an AUTH frame */
    TPAR_AUTH_CHALLENGE = 1,
    TPAR_AUTH_RESPONSE = 2,
    TPAR_AUTH_PROOF = 3,
};

enum tpar_auth_role { TPAR_AUTH_PARENT = 1, TPAR_AUTH_WORKER = 2 };

/* Makes a fresh random secret: key[] and its hex form (NUL-terminated).
 * 0, or -EIO when no crypto library could be initialised. */
int tpar_secret_new(uint8_t key[TPAR_SECRET_LEN], char hex[TPAR_SECRET_HEX + 1]);

/* Reads the secret from TPAR_SECRET_ENV, overwrites the value in place and
 * removes the variable, so that neither the jobs' os.environ nor
 * /proc/PID/environ shows it.  -ENOENT when unset, -EINVAL when it is not
 * 64 hex digits (the variable is wiped either way). */
int tpar_secret_from_env(uint8_t key[TPAR_SECRET_LEN]);

/* One side of the handshake, sans I/O: the caller reads exactly
 * tpar_auth_want() bytes at a time (never more: what follows the handshake
 * belongs to the frame stream), feeds them, and sends what appears in
 * `out`.  A parent's CHALLENGE is in `out` right after init. */
typedef struct tpar_auth {
    int role;          /* TPAR_AUTH_PARENT or TPAR_AUTH_WORKER */
    int step;          /* the AUTH step expected next; 0 when done */
    uint8_t key[TPAR_SECRET_LEN];
    uint8_t np[TPAR_AUTH_NONCE_LEN], nw[TPAR_AUTH_NONCE_LEN];
    uint8_t in[TPAR_FRAME_HEADER + TPAR_AUTH_FRAME_MAX]; /* the frame being read */
    size_t have;       /* bytes of it held */
    tpar_buf out;      /* bytes to send; the caller consumes them */
} tpar_auth;

/* 0, -ENOMEM, or -EIO (no crypto library). */
int tpar_auth_init(tpar_auth *a, int role, const uint8_t key[TPAR_SECRET_LEN]);

/* How many bytes to read next: 1 or more while the handshake goes on, 0
 * when it is done (or has failed). */
size_t tpar_auth_want(const tpar_auth *a);

/* Takes n (<= tpar_auth_want) bytes.  Returns 0 to go on, 1 when the peer
 * is authenticated (the parent then still has its PROOF in `out` to send),
 * or on failure: TPAR_EAUTH (wrong secret), TPAR_ETOOBIG (a frame longer
 * than an AUTH frame), TPAR_EBADFRAME (anything else: not an AUTH frame,
 * the wrong step, the wrong length); the peer must then be dropped. */
int tpar_auth_feed(tpar_auth *a, const uint8_t *p, size_t n);

/* Wipes the key and nonces and frees `out`.  Idempotent. */
void tpar_auth_clear(tpar_auth *a);

/* Splits "HOST:PORT" ("[v6addr]:PORT" for IPv6) into host (NUL-terminated,
 * brackets removed) and port.  An empty HOST is "" (any address, for a
 * listener).  0 or -EINVAL (no port, port over 65535, host too long). */
int tpar_addr_split(const char *addr, char *host, size_t hostn, unsigned *port);

/* Socket options of a worker connection, both ends: TCP_NODELAY (a frame
 * goes out at once), and keepalive probes after 30 s of silence, so a
 * node that vanished without a FIN (power, network) reads as a dropped
 * connection within about a minute and a half. */
void tpar_tcp_tune(int fd);

/* The parent's listening side: a listening socket and the connections that
 * have not yet authenticated, behind one epoll fd the caller watches for
 * readability (libuv: uv_poll; Trio: wait_readable).  The listener bounds
 * what an unauthenticated peer can cost: at most max_pending connections
 * at a time (past that the kernel's backlog holds the rest; once the one
 * that has waited longest has waited 1 s, or auth_timeout if shorter, it is
 * dropped for the next newcomer: event REFUSED, -EBUSY), auth_timeout
 * seconds each, frames of TPAR_AUTH_FRAME_MAX bytes at
 * most.  Events are pulled. */
typedef struct tpar_listener tpar_listener;

typedef struct tpar_listen_opts {
    int max_pending;     /* 0: 64 */
    double auth_timeout; /* seconds; 0: 10 */
} tpar_listen_opts;

/* Binds host:port (host "": every address; port 0: any free port) and
 * listens.  On failure *out is untouched, nothing is left open, and -errno
 * is returned (-EADDRINUSE, -EADDRNOTAVAIL; -ENOENT: host does not
 * resolve). */
int tpar_listener_open(tpar_listener **out, const char *host, unsigned port,
                       const uint8_t key[TPAR_SECRET_LEN],
                       const tpar_listen_opts *opts);

/* The fd to watch for readability; it stays the same for the listener's
 * life.  The caller never reads it. */
int tpar_listener_fd(const tpar_listener *l);

/* The port bound (the one chosen when 0 was asked for). */
unsigned tpar_listener_port(const tpar_listener *l);

/* Connections waiting to authenticate. */
int tpar_listener_pending(const tpar_listener *l);

/* When the next pending connection times out (tpar_now's clock), or 0 when
 * none is pending: call tpar_listener_next then even if the fd is quiet. */
double tpar_listener_deadline(const tpar_listener *l);

enum tpar_listen_event_kind {
    TPAR_LISTEN_WORKER = 1,  /* fd: an authenticated worker; now the caller's */
    TPAR_LISTEN_REFUSED = 2, /* a peer was dropped; reason says why */
    TPAR_LISTEN_ERROR = 3,   /* accept failed (fds exhausted...); err; the
                                listener tries again a little later */
};

#define TPAR_PEER_MAX 64
typedef struct tpar_listen_event {
    int kind;
    int fd;                   /* WORKER: connected, O_NONBLOCK, O_CLOEXEC, tuned */
    int err;                  /* REFUSED/ERROR: the code (TPAR_EAUTH, -ETIMEDOUT...) */
    char peer[TPAR_PEER_MAX]; /* "10.0.0.7:41822", "[fe80::1]:41822" */
    const char *reason;       /* REFUSED/ERROR: a static message */
} tpar_listen_event;

/* Accepts, reads and answers what is ready, drops what timed out, without
 * blocking.  Returns 1 with *ev filled, 0 when there is nothing more to do
 * now (wait for the fd or the deadline), -errno on a failure of the
 * listener itself. */
int tpar_listener_next(tpar_listener *l, tpar_listen_event *ev);

/* Closes the listener and every pending connection (not the workers it
 * handed out); wipes the key.  NULL is a no-op. */
void tpar_listener_free(tpar_listener *l);

/* A launcher is the command that starts remote workers where they run
 * (`srun ... tpar-worker --connect {addr}`, `ssh node7 tpar-worker
 * --connect {addr}`).  tpar_launcher_argv splits cmd into words with a
 * shell's quoting and nothing else: blanks separate words, '...' is
 * literal, "..." takes \" \\ \$ \` as escapes, and \x outside quotes is x;
 * no expansion, no globbing, no operators (there is no shell between tpar
 * and a worker).  Then each "{addr}" inside a word becomes addr, so an
 * address never splits or joins words.  *argv is one allocation (free()
 * it), NULL-terminated.  -EINVAL with *errmsg set (a static string) for an
 * unbalanced quote, an empty command, or one without {addr}; -ENOMEM. */
int tpar_launcher_argv(const char *cmd, const char *addr, char ***argv,
                       const char **errmsg);

/* Starts argv (argv[0] searched on PATH) as a new process group, with the
 * environment plus TPAR_SECRET_ENV=hex, stdin a pipe that carries the
 * secret's line ("hex\n", for launchers that pass stdin on and not the
 * environment, as ssh), stdout onto our stderr (the results own stdout),
 * stderr inherited, every other fd closed.  *p gets the pid; its fds are
 * -1 (reap it with tpar_proc_reap).  0, or -errno with nothing started
 * (-ENOENT: no such command). */
int tpar_launcher_spawn(tpar_proc *p, char *const argv[],
                        const char hex[TPAR_SECRET_HEX + 1]);

/* "killed by signal 9 (SIGKILL)" / "exited with code 3": a description
 * of a wait status, written NUL-terminated into buf. */
void tpar_describe_status(int status, char *buf, size_t n);

/* Monotonic clock in seconds. */
double tpar_now(void);

/* Number of CPUs this process may run on (sched_getaffinity), >= 1. */
int tpar_cpu_count(void);

/* 1 when more tasks are runnable on this machine than it has CPUs online
 * (the running count of /proc/loadavg, the caller included; less one
 * when process `ours` (a worker's parent; 0: none) is among them: tpar's
 * own parent, feeding the workers, is not contention), else 0; 0
 * too where /proc/loadavg cannot be read.  Reads it at most once every
 * TPAR_LOAD_CHECK_S seconds of `now` (tpar_now()) per process, and
 * answers from the last reading in between, for the same `ours` (another
 * `ours` reads again).  A spin that yields the CPU
 * hands it, on such a machine, to another process for a time slice,
 * where a task blocked in poll would have been woken at once: spinners
 * ask this first. */
int tpar_cpus_oversubscribed(double now, pid_t ours);
#define TPAR_LOAD_CHECK_S 0.005

/* /proc/loadavg's text ("0.20 0.18 0.12 3/80 11206") -> the tasks
 * runnable now (3), or -1 when the text is not that. */
long tpar_loadavg_runnable(const char *text);

/* The parent's spin for a warm call's answer: a sched_yield() that took
 * this long (seconds) lost a time slice to another process, and it stops
 * spinning for a while.  Shorter waits are blips (an interrupt, a kernel
 * thread) that come on a quiet machine too; at 50-200 µs they kept it off
 * the spin most of the time.  The workers have no such rule: their load
 * check (above) sees the other processes, and a worker's lost slice is
 * most often its own parent's (docs/design.md, "Spinning before
 * blocking"). */
#define TPAR_LOST_YIELD_S 0.0005

#ifdef __cplusplus
}
#endif
#endif
