"""The benchmark's data model: a Case holds, per subject (tpar, a peer), the
list of repetitions or the reason it was skipped, and which peer each
subject is compared with."""
from common import summarize, ratio


class Case:
    def __init__(self, group, key, title, unit, better="lower", note="",
                 baseline=None):
        self.group = group          # "trio", "cli" or "reference"
        self.key = key              # stable id, e.g. "trio.warm_latency"
        self.title = title
        self.unit = unit            # unit of every value (display unit)
        self.better = better        # "lower" or "higher"
        self.notes = [note] if note else []
        self.baseline = baseline    # default peer for ratios
        self.reps = {}              # subject -> [values]
        self.skipped = {}           # subject -> [reasons] of failed reps
        self.ratio_to = {}          # subject -> peer subject
        self.extra = {}             # subject -> dict of side figures

    def subject(self, name, ratio_to=None):
        """Declares a subject (keeps the order of declaration)."""
        self.reps.setdefault(name, [])
        if ratio_to is not None:
            self.ratio_to[name] = ratio_to
        return name

    def add(self, name, value, ratio_to=None):
        self.subject(name, ratio_to)
        self.reps[name].append(value)

    def skip(self, name, reason, ratio_to=None):
        self.subject(name, ratio_to)
        reasons = self.skipped.setdefault(name, [])
        if str(reason) not in reasons:
            reasons.append(str(reason))

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def stats(self, name):
        return summarize(self.reps.get(name, []))

    def skip_reason(self, name):
        """Why a subject has no figure (None when it has one)."""
        if self.reps.get(name):
            return None
        return "; ".join(self.skipped.get(name, [])) or "not measured"

    def peer_of(self, name):
        peer = self.ratio_to.get(name, self.baseline)
        return None if peer == name else peer

    def to_json(self):
        rows = []
        for name in self.reps:
            row = {"subject": name}
            st = self.stats(name)
            if st is None:
                row["skipped"] = self.skip_reason(name)
            else:
                row.update(st)
                if self.skipped.get(name):
                    row["failed_reps"] = self.skipped[name]
                peer = self.peer_of(name)
                if peer:
                    row["ratio_to"] = peer
                    row["ratio"] = ratio(st, self.stats(peer))
                    if row["ratio"] is None:
                        row["ratio_missing"] = f"{peer}: " + \
                            (self.skip_reason(peer) or "no data")
            if name in self.extra:
                row["extra"] = self.extra[name]
            rows.append(row)
        return {"group": self.group, "key": self.key, "title": self.title,
                "unit": self.unit, "better": self.better,
                "notes": self.notes, "results": rows}
