# A SIGCHLD handler without SA_RESTART, and children exiting while the next
# fork is trapped: the kernel never fails a fork with EINTR by itself.
# Run as `python -c "$(cat this)" N`: prints how many of N forks failed so.
import os
import signal
import sys

signal.signal(signal.SIGCHLD, lambda *a: None)
signal.siginterrupt(signal.SIGCHLD, True)
failed = 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except InterruptedError:
        failed += 1
        continue
    if pid == 0:
        os._exit(0)
print(failed)
