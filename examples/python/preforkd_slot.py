"""Report busy and idle in a preforkd scoreboard slot (`preforkd run --busy-from slot`).

The layout is in docs/run.md: slot N is the 64-byte record at 64 * (N + 1);
its state byte at 4 (1 starting: write 2 once ready; 2 idle, 3 busy), requests
served (u64) at 16, the request's start and heartbeat (CLOCK_MONOTONIC ns) at 24, 32.
"""
import mmap, os, struct, time

class Slot:
    def __init__(self):
        fd = int(os.environ["PREFORKD_SCOREBOARD_FD"])
        self.at = 64 * (int(os.environ["PREFORKD_SLOT"]) + 1)
        self.board = mmap.mmap(fd, 0)
        self.requests = struct.unpack_from("=Q", self.board, self.at + 16)[0]
        self.board[self.at + 4] = 2  # ready

    def busy(self):
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        struct.pack_into("=QQ", self.board, self.at + 24, now, now)
        self.board[self.at + 4] = 3

    def idle(self):
        self.requests += 1
        struct.pack_into("=Q", self.board, self.at + 16, self.requests)
        self.board[self.at + 4] = 2
