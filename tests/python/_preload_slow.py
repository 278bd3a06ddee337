"""A module for preload= tests that takes a while to import."""
import os
import time

time.sleep(0.5)
IMPORTED_IN = os.getpid()
