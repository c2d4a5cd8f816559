"""The one test hook: pause a process at a named point until a test lets it go.

Inert unless SEARCHFORMER_PAUSE_AT is set, so tests synchronise with a trainer through files
instead of racing its output or the wall clock. Imports nothing heavy: train.py calls it before
importing torch."""
import os
import time


def pause(point):
    """When SEARCHFORMER_PAUSE_AT (comma-separated) names `point`: create
    $SEARCHFORMER_PAUSE_DIR/<point>.<pid>, then wait until <point>.go exists there."""
    names = os.environ.get("SEARCHFORMER_PAUSE_AT")
    if not names or point not in names.split(","):
        return
    folder = os.environ["SEARCHFORMER_PAUSE_DIR"]
    open(os.path.join(folder, f"{point}.{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(folder, f"{point}.go")):
        time.sleep(0.02)
