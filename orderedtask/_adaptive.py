"""The concurrency controller: how many workers should run, from measured throughput.

A hill climber in the manner of the .NET thread pool's (Hellerstein et al., 2008): it measures
completions per second at the level it runs, moves to another level, and keeps the move if
the rate says so. It has no threads and no clock of its own: the caller passes the time and
the running count of completed items to ``update``, which returns the level to run at. Level
0 means that no worker runs: the consumer runs the work itself.

Levels move along a ladder (0, 1, 2, 4, 8, ... ``max_level``). A move is judged on the rate
of the two intervals after it, pooled (one is enough when the rate rose or fell by half, or
rose on a step down): a step up must pay (raise the rate by more than the noise,
``tolerance``; a step that scales linearly skips a rung next); a step down is kept unless it
costs (fewer workers are cheaper, so a flat stretch is walked down); a step up that clearly
costs is undone after a quarter of an interval. Up from 0 the first step is to 2: one worker
beside an idle consumer runs no faster than the consumer alone, so 1 would stop every climb;
with the GIL on, items too cheap for any hand-off (``cheap_rate``) do not climb at all, and
items slow enough that a hand-off is noise (``SLOW_RATE``) step to 8 at once.
Settled, the controller re-probes a neighbour now and then (up and down in turn, first away
from the step that ended the climb; less often while probes do not pay). The workload
changed, and the climb starts again from the fewest workers, when a level runs at a rate far
from the one it ran at before (in any mode: a change during a climb is caught too), or when
a settled rate stays away from its average, on one side of it, three readings in a row (a
shorter run away from it was noise, and is averaged in). A settled level whose workers had
work waiting, and now wait for work half the time or more (the caller passes their idle
seconds in), is probed down at once, to the rung that holds the busy ones: a change the rate
may not show.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from ._core import gil_enabled

#: An interval is measured for at least this long (several GIL switch intervals: a shorter
#: one sees how the GIL happened to be handed round, not the level) ...
MIN_INTERVAL = 0.04
#: ... and until this many items completed in it, or for at most MAX_INTERVAL.
MIN_SAMPLES = 64
MAX_INTERVAL = 1.0
#: How long the consumer may go between readings: ``Tuner.tune`` says how many items that is.
READING_SECONDS = 0.004
#: The most items between readings (a reading costs about a microsecond), and the number
#: before the first rate is known.
MAX_UNREAD = 256
FIRST_UNREAD = 16
#: The noise a move tolerates: a step up must raise the rate by more than this fraction, a
#: step down may lower it by up to this fraction.
TOLERANCE = 0.08
#: A step up that raises the rate by this factor needs no second interval to confirm it.
STRONG_GAIN = 1.5
#: A step up that raises the rate by this fraction of the factor it adds workers by (work
#: that waits: I/O, sleeps) skips a rung on the way up.
LINEAR = 0.9
#: A step up whose rate falls below this fraction of the rate before it is undone after a
#: quarter of an interval (GIL-bound work at 2 workers runs at a quarter of the consumer's rate).
CLEAR_LOSS = 0.5
#: With the GIL on, items the consumer runs at this rate or faster at level 0 (5 µs each or
#: less) cannot run faster on threads: handing one to a worker costs about a microsecond of
#: GIL-held work on either side, which such an item does not save even if it released the GIL
#: throughout. The climb from 0 settles at once for them; probes go on, every
#: MAX_REPROBE_SECONDS from the first.
CHEAP_RATE = 200_000.0
#: Items the consumer runs slower than this at level 0 (half a millisecond each or more) make
#: a hand-off noise: the first step of a climb goes to SLOW_STEP workers, not 2 (work that
#: waits scales from there; GIL-bound work loses no more at 8 threads than at 2, as a thread
#: holds the GIL for whole items), and a cold start warms up for a quarter of an interval
#: only (a cold cache is nothing beside such items).
SLOW_RATE = 2_000.0
SLOW_STEP = 8
#: How soon a settled controller tries a neighbour, in seconds; each probe that does not
#: pay doubles the wait, up to MAX_REPROBE_SECONDS (a probe runs at a worse level a while).
REPROBE_SECONDS = 1.0
MAX_REPROBE_SECONDS = 8.0
#: A settled rate this far from its average, SURPRISES readings in a row and on the same
#: side of it, is a change of workload (many threads on two cores release in bursts: one
#: interval of a stall and one of its catch-up are not a change) ...
STEP_CHANGE = 0.35
SURPRISES = 3
#: ... where the average starts as the mean of the readings after the first one at the level.
FRESH_READINGS = 3
#: ... and so is a level's rate this many times above or below the one it ran at before,
#: twice in a row (noise at one level is tens of percent, now and then an odd interval; a
#: changed workload is several times, and stays).
LEVEL_CHANGE = 4.0
#: Settled where the workers waited for work at most IDLE_LOW of the time (the first
#: IDLE_FRESH readings at the level), IDLE_READINGS readings in a row where they wait
#: IDLE_HIGH of it or more probe down at once, to the rung that holds the busy ones.
IDLE_LOW = 0.25
IDLE_HIGH = 0.5
IDLE_FRESH = 2
IDLE_READINGS = 2
#: How many decisions ``decisions`` keeps.
HISTORY = 64


def ladder(max_level: int, min_level: int = 0) -> list[int]:
    """The levels the controller moves between: min_level, powers of two, max_level."""
    levels = {min_level, max_level}
    level = 1
    while level < max_level:
        if level >= min_level:
            levels.add(level)
        level *= 2
    return sorted(levels)


@dataclass(frozen=True)
class Decision:
    """One move of the controller: when, from which level to which, and why."""

    time: float
    previous: int
    level: int
    rate: float  # items per second measured at ``previous`` (since the move there)
    reason: str


class ConcurrencyController:
    """Chooses a level in ``[min_level, max_level]`` from the completion rates it is shown."""

    def __init__(self, max_level: int, *, min_level: int = 0, start: int | None = None,
                 tolerance: float = TOLERANCE, reprobe: float = REPROBE_SECONDS,
                 min_interval: float = MIN_INTERVAL, min_samples: int = MIN_SAMPLES,
                 max_interval: float = MAX_INTERVAL, cheap_rate: float | None = None) -> None:
        if not 0 <= min_level <= max_level:
            raise ValueError(f"need 0 <= min_level <= max_level, got {min_level}, {max_level}")
        first = min_level if start is None else start
        if not min_level <= first <= max_level:
            raise ValueError(f"start must be within [{min_level}, {max_level}], got {first}")
        self.levels = ladder(max_level, min_level)
        self.min_level, self.max_level = min_level, max_level
        self.tolerance = tolerance
        self.reprobe = reprobe
        self.min_interval = min_interval
        self.min_samples = min_samples
        self.max_interval = max_interval
        self.cheap_rate = cheap_rate  # items/s at level 0 above which a climb stops at once
        self.level = first
        self.decisions: deque[Decision] = deque(maxlen=HISTORY)
        self.rate = 0.0  # the last rate measured
        self.idle: float | None = None  # the share of it the workers waited for work
        self._idle_mark: float | None = None  # the idle total at the interval's start
        self._idle_base = 1.0  # the settled level's idle share (1.0: not known yet)
        self._idle_high = 0  # readings in a row with the workers idle, settled
        self._idle_fresh = 0  # readings left that set _idle_base
        self._since: float | None = None  # the current interval's start: time, count
        self._count = 0
        self._mode = "moving"  # "moving", "probing" or "settled"
        self._direction = 1
        self._came_from: tuple[int, float] | None = None  # the level a move left, its rate
        self._settled_at = 0.0
        self._average = 0.0  # the settled level's rate, smoothed
        self._surprises = 0  # readings in a row far from the settled average: + above, - below
        self._streak = 0  # surprising readings in a row, either side
        self._held: list[float] = []  # the current run's readings, not averaged in yet
        self._fresh = 0  # readings after settling that only set the average
        self._next_probe = 1
        self._probe_gap = reprobe
        self._confirmed = False  # a move's first verdict was not strong: measured again
        self._pooled = (0.0, 0)  # the seconds and items measured since the last move
        # The interval after a move (and the first) is not measured: the window fills or
        # drains then, and completions run ahead of (or behind) the level's steady rate.
        self._warming = min_interval  # seconds; the first a whole interval (cold caches)
        self._rates: dict[int, float] = {}  # level -> the rate it ran at last (not odd)
        self._odd = 0  # readings in a row at this level far from its rate

    def update(self, now: float, completed: int, idle: float | None = None) -> int:
        """Take a reading; return the level.

        ``completed`` is the running total of completed items, ``idle`` (optional) the
        running total of the seconds workers spent waiting for work, summed over them.
        """
        if self._since is None:
            self._since, self._count, self._idle_mark = now, completed, idle
            return self.level
        elapsed, done = now - self._since, completed - self._count
        if self._warming:  # not measured
            if elapsed >= self._warming or self._slow_start(elapsed, done):
                self._warming = 0.0
                self._since, self._count, self._idle_mark = now, completed, idle
            return self.level
        # At level 0 the consumer runs every item itself, and no burst of threads sways the
        # count: half the samples measure it as well.
        samples = self.min_samples if self.level else self.min_samples // 2
        if not self._clearly_lost(elapsed, done) and (
                elapsed < self.min_interval
                or (done < samples and elapsed < self.max_interval)):
            return self.level
        self._since, self._count = now, completed
        self.rate = done / elapsed
        self.idle = self._idle_fraction(elapsed, idle)
        if self._level_changed(self.rate):
            self._restart(now, self.rate)
            return self.level
        if self._mode != "settled":
            seconds, items = self._pooled
            self._pooled = (seconds + elapsed, items + done)
        if self._mode == "moving":
            self._moved(now, self._pooled_rate())
        elif self._mode == "probing":
            self._probed(now, self._pooled_rate())
        else:
            self._watch(now, self.rate)
        return self.level

    def _slow_start(self, elapsed: float, done: int) -> bool:
        # The cold start's warm-up, cut short when a quarter of it shows items of SLOW_RATE.
        quarter = self.min_interval / 4
        return (self.level == 0 and not self.decisions and elapsed >= quarter
                and done < SLOW_RATE * quarter)

    def _idle_fraction(self, elapsed: float, idle: float | None) -> float | None:
        # The share of the interval the level's workers spent waiting for work.
        mark, self._idle_mark = self._idle_mark, idle
        if idle is None or mark is None or not self.level:
            return None
        return min(1.0, max(0.0, (idle - mark) / (elapsed * self.level)))

    def _pooled_rate(self) -> float:
        # A move is judged on every interval measured since it: with many threads on two
        # cores one interval reads tens of percent off (the GIL releases them in bursts).
        seconds, items = self._pooled
        return items / seconds if seconds > 0 else self.rate

    def raise_floor(self, now: float, min_level: int) -> int:
        """Never go below ``min_level`` from now on (the level rises to it if lower)."""
        self.min_level = max(self.min_level, min(min_level, self.max_level))
        self.levels = ladder(self.max_level, self.min_level)
        if self.level < self.min_level:
            self._settle(now, self.min_level, self.rate, "the floor rose")
        return self.level

    def climb_from_floor(self, now: float, reason: str) -> int:
        """Before the first reading: begin the climb at ``min_level`` instead of ``start``.

        For a start level that only had to hold until someone who can run level 0 came.
        """
        if self._since is None and not self.decisions and self.level != self.min_level:
            warming = self._warming  # the cold start's whole interval, not a move's quarter
            self._go(now, self.min_level, reason)
            self._warming = max(warming, self._warming)
        return self.level

    @property
    def settled(self) -> bool:
        """True once it settled on a level (and until the next probe or change)."""
        return self._mode == "settled"

    # -- the ladder ----------------------------------------------------------------------

    def _step(self, level: int, direction: int) -> int | None:
        above = [rung for rung in self.levels if rung > level]
        below = [rung for rung in self.levels if rung < level]
        if direction > 0:
            if level == 0 and len(above) > 1 and above[0] == 1:
                return above[1]  # 0 -> 2: see the module's docstring
            return above[0] if above else None
        return below[-1] if below else None

    def _clearly_lost(self, elapsed: float, done: int) -> bool:
        # A quarter of an interval is enough to undo a step up that costs half the rate: a
        # probe of GIL-bound work runs at a quarter of the consumer's speed, and each one
        # costs that for as long as it lasts.
        came_from = self._came_from
        return (came_from is not None and self._direction > 0
                and elapsed >= self.min_interval / 4 and done >= self.min_samples // 2
                and done < CLEAR_LOSS * came_from[1] * elapsed)

    def _level_changed(self, rate: float) -> bool:
        # The same level, several times faster or slower than it ran before, twice in a row:
        # not noise (one interval in many threads' GIL convoy can be). A stall, nothing
        # completed, says nothing about the workload.
        before = self._rates.get(self.level, 0.0)
        if rate > 0 and before > 0 and not before / LEVEL_CHANGE < rate < before * LEVEL_CHANGE:
            self._odd += 1
            return self._odd >= 2
        self._odd = 0
        if rate > 0:
            self._rates[self.level] = rate
        return False

    def _accepts(self, direction: int, rate: float, before: float) -> bool:
        if direction > 0:
            return rate > before * (1.0 + self.tolerance)
        return rate >= before * (1.0 - self.tolerance)

    # -- moves ---------------------------------------------------------------------------

    def _go(self, now: float, level: int, reason: str, rate: float | None = None) -> None:
        if level != self.level:
            if rate is None:  # the rate the move was judged on
                rate = self._pooled_rate()
            self.decisions.append(Decision(now, self.level, level, rate, reason))
            self.level = level
            self._warming = self.min_interval / 4
            self._odd = 0
            self._confirmed = False
            self._pooled = (0.0, 0)

    def _restart(self, now: float, rate: float) -> None:
        # The workload changed: climb again from the fewest workers, as at the start. A walk
        # from here would trust rates measured on the old workload, and GIL-bound work at
        # many threads measures too noisily to walk down quickly.
        self._surprises = self._streak = 0
        self._held.clear()
        self._probe_gap = self.reprobe
        self._rates = {self.level: rate}
        self._odd = 0
        self._mode = "moving"
        self._direction = 1
        self._came_from = None
        if self.level == self.min_level:
            self._climb(now, rate)
        else:
            self._go(now, self.min_level, "the workload changed: climbing again", rate)

    def _climb(self, now: float, rate: float) -> None:
        # The first step of a climb, from the rate at the lowest level.
        if self.level == 0 and self.cheap_rate is not None and rate >= self.cheap_rate:
            reason = "items this cheap cannot pay for a hand-off"
            self._settle(now, 0, rate, reason)
            # A probe costs three quarters of the rate while it lasts, and a workload this
            # cheap is not expected to pay for one: the first waits the longest gap.
            self._probe_gap = MAX_REPROBE_SECONDS
            self.decisions.append(Decision(now, 0, 0, rate, f"settled: {reason}"))  # no move
            return
        self._continue(now, rate)

    def _moved(self, now: float, rate: float) -> None:
        came_from = self._came_from
        if came_from is None:
            self._climb(now, rate)
            return
        if self._unconfirmed(rate, came_from[1]):
            return
        if not self._accepts(self._direction, rate, came_from[1]):
            # The first probe goes the other way: this way was just measured, and after a
            # climb the rung below is where a plateau's noise may have lifted it from
            # (a step up must gain, a step down only not cost).
            self._next_probe = -self._direction
            self._settle(now, came_from[0], came_from[1],
                         "the step did not pay" if self._direction > 0 else "the step cost")
            return
        self._continue(now, rate)

    def _unconfirmed(self, rate: float, before: float) -> bool:
        # A verdict takes two intervals, pooled: one lucky interval (the GIL handed round
        # kindly, the collector idle) must not buy threads that then cost, nor one unlucky
        # one undo a step that pays. A strong signal (the rate rose or fell by half) is
        # enough at once, and so is a step down that gains (fewer workers, and faster:
        # a walk down from many threads contending takes one interval a rung).
        strong = (rate > before * STRONG_GAIN or rate * STRONG_GAIN < before
                  or (self._direction < 0 and rate > before * (1.0 + self.tolerance)))
        if strong or self._confirmed:
            self._confirmed = False
            return False
        self._confirmed = True
        return True

    def _continue(self, now: float, rate: float) -> None:
        nxt = self._step(self.level, self._direction)
        if nxt is None:
            self._settle(now, self.level, rate, "at the end of the ladder")
            return
        reason = "stepping up" if self._direction > 0 else "stepping down"
        if self._direction > 0 and self.level == 0 and 0 < rate < SLOW_RATE:
            nxt = max(rung for rung in self.levels if rung <= max(SLOW_STEP, nxt))
            reason = "stepping up (items this slow make a hand-off noise)"
        elif self._direction > 0 and self._scaled_linearly(rate):
            further = self._step(nxt, 1)
            if further is not None:  # a probe finds the rung skipped if it was the best
                nxt, reason = further, "stepping up two rungs (the last step scaled linearly)"
        self._came_from = (self.level, rate)
        self._go(now, nxt, reason)

    def _scaled_linearly(self, rate: float) -> bool:
        # The step just measured raised the rate as much as it added workers (the consumer
        # alone counts as one): the work waits, so the climb can go faster.
        came_from = self._came_from
        if came_from is None or came_from[1] <= 0 or self.level <= came_from[0]:
            return False
        added = max(self.level, 1) / max(came_from[0], 1)
        return rate >= LINEAR * added * came_from[1]

    def _settle(self, now: float, level: int, rate: float, reason: str) -> None:
        self._mode = "settled"
        self._came_from = None
        self._settled_at = now
        # Measured afresh, from the second reading on: ``rate`` may be from a while ago or
        # a warm-up, and the first reading here still drains what the last level left.
        self._average = 0.0
        self._fresh = FRESH_READINGS
        self._surprises = self._streak = 0
        self._held.clear()
        self._rebase_idle()
        self._go(now, level, f"settled: {reason}")

    def _watch(self, now: float, rate: float) -> None:
        idle = self.idle
        if self._idle_fresh:  # the level's idle share, as it returned to it
            self._idle_fresh -= 1
            self._idle_base = max(self._idle_base, 1.0 if idle is None else idle)
        elif (target := self._idle_target(idle)) is not None:
            self._probe(now, -1, f"probing down: the workers wait for work {idle:.0%} of "
                                 f"the time", target)
            return
        if self._fresh:  # just settled: the first readings set the average, unjudged
            self._fresh -= 1
            if self._fresh < FRESH_READINGS - 1:  # the first one is skipped
                measured = FRESH_READINGS - 1 - self._fresh
                self._average += (rate - self._average) / measured
            return
        average = self._average
        if average > 0 and abs(rate - average) > STEP_CHANGE * average:
            side = 1 if rate > average else -1
            if self._surprises * side <= 0:  # the run on the other side was noise
                self._average_in_held()
            self._surprises += side
            self._held.append(rate)
            self._streak += 1
            if abs(self._surprises) >= SURPRISES:
                self._restart(now, rate)
                return
            # A change being confirmed is not probed from; surprises on both sides for as
            # long as a confirmation takes are this level's noise, and do not stop probes.
            if self._streak < SURPRISES:
                return
        else:
            self._average_in_held()
            self._streak = 0
            self._average_in(rate)
        if now - self._settled_at < self._probe_gap:
            return
        for direction in (self._next_probe, -self._next_probe):
            if self._probe(now, direction, "probing up" if direction > 0 else "probing down"):
                return

    def _probe(self, now: float, direction: int, reason: str, to: int | None = None) -> bool:
        self._settled_at = now
        neighbour = self._step(self.level, direction) if to is None else to
        if neighbour is None:
            return False
        self._next_probe = -direction
        self._mode = "probing"
        self._direction = direction
        self._came_from = (self.level, self._average)
        self._go(now, neighbour, reason, self._average)
        return True

    def _idle_target(self, idle: float | None) -> int | None:
        # Settled where the workers had work waiting, they now wait for work (the source or
        # the consumer cannot keep up, or the work got cheap: with the GIL off, many threads
        # on few cores may run it at the rate they ran the waits before, and the rate alone
        # does not tell): fewer workers would do as well, or better. The level to probe:
        # the rung that holds the workers busy now (the rest only wait), if below this one.
        if idle is None or idle < IDLE_HIGH or self._idle_base > IDLE_LOW:
            self._idle_high = 0
            return None
        self._idle_high += 1
        if self._idle_high < IDLE_READINGS:
            return None
        busy = max(1.0, self.level * (1.0 - idle))
        target = min(rung for rung in self.levels if rung >= busy)
        return target if target < self.level else None

    def _rebase_idle(self) -> None:
        # The next readings at this level set the idle share that later ones are held to.
        self._idle_base, self._idle_fresh, self._idle_high = 0.0, IDLE_FRESH, 0

    def _average_in_held(self) -> None:
        # A run of surprises that ended was noise: its readings count, or the average would
        # drift away from every burst it left out.
        for rate in self._held:
            self._average_in(rate)
        self._held.clear()
        self._surprises = 0

    def _average_in(self, rate: float) -> None:
        self._average = 0.7 * self._average + 0.3 * rate if self._average > 0 else rate

    def _probed(self, now: float, rate: float) -> None:
        came_from = self._came_from
        assert came_from is not None
        if self._unconfirmed(rate, came_from[1]):
            return
        if self._accepts(self._direction, rate, came_from[1]):
            self._mode = "moving"  # keep going that way
            self._probe_gap = self.reprobe
            # The rates other levels ran at are of a workload that this probe says has
            # changed (or were measured wrong): on the walk from here they would take the
            # better rate at the next rung for a change again, and climb from the floor.
            self._rates = {came_from[0]: came_from[1], self.level: rate}
            self._continue(now, rate)
            return
        self._confirmed = False
        self._probe_gap = min(2 * self._probe_gap, MAX_REPROBE_SECONDS)
        self._mode = "settled"
        self._came_from = None
        self._settled_at = now
        self._rebase_idle()
        self._go(now, came_from[0], "back from a probe")


class Tuner:
    """Adaptive concurrency for one engine: its controller, and the workers it starts.

    The engine's cursor is its ``helper``: it shows ``tune`` the progress as it consumes
    and, at level 0, runs batches itself with ``inline_context()``. Threads start only when
    the level first needs them, and ``on_first_worker`` (the feeder of a ``map``) runs when the
    level first leaves 0. ``inline=False`` (an asyncio consumer, which must never run the
    work on its loop) keeps at least one worker. ``provisional=True``: ``start`` holds only
    until the consumer's first report, and the climb then begins at the lowest level (a
    ``Pool`` runs one worker so that tasks run before anyone consumes; its consumer may then
    run them itself).
    """

    def __init__(self, engine: Any, backend: Any, name: str, max_workers: int,
                 start: int | None = None, on_first_worker: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = monotonic, inline: bool = True,
                 provisional: bool = False) -> None:
        self.engine = engine
        self.backend = backend
        self.name = name
        self.clock = clock
        low = min(backend.min_level if inline else max(1, backend.min_level), max_workers)
        if start is None and backend.start_at_ceiling:
            start = max_workers
        first = None if start is None else max(low, min(start, max_workers))
        # With the GIL on, level 0 tells cheap items from the rest (CHEAP_RATE).
        cheap = CHEAP_RATE if low == 0 and gil_enabled() else None
        self.controller = ConcurrencyController(max_workers, min_level=low, start=first,
                                                cheap_rate=cheap)
        self.threads: list[threading.Thread] = []
        self._on_first_worker = on_first_worker
        self._provisional = provisional
        self._last_report: tuple[float, int] | None = None  # tune's last (time, completed)

    def start(self) -> None:
        """Run at the controller's first level (threads start from here on, as needed)."""
        self._apply(self.controller.level)

    def forbid_inline(self) -> None:
        """From now on keep at least one worker: the consumer will not run work itself."""
        level = self.controller.raise_floor(self.clock(), 1)
        if level != self.engine.level:
            self._apply(level)

    def tune(self, completed: int) -> int:
        """The cursor's progress report: move to the level the controller chooses.

        Returns how many items the consumer may yield before the next report: a few
        milliseconds' worth at the rate measured last.
        """
        controller = self.controller
        now = self.clock()
        if self._provisional:
            self._provisional = False
            controller.climb_from_floor(now, "a consumer came: climbing from the fewest")
        engine = self.engine
        idle = engine.idle_seconds if engine.level else None  # none to wait at level 0
        level = controller.update(now, completed, idle)
        if level != engine.level:
            self._apply(level)
        # Until the controller has measured a rate (its first interval and a warm-up, ~80
        # ms), the pace since the last report sizes the next: at FIRST_UNREAD throughout,
        # items of a few hundred nanoseconds paid a reading every 16 of them, ~5% of the time.
        rate, last = controller.rate, self._last_report
        if not rate and last is not None and now > last[0]:
            rate = (completed - last[1]) / (now - last[0])
        self._last_report = (now, completed)
        if not rate:  # nothing measured yet: a reading per item would be the cost
            return FIRST_UNREAD
        return max(1, min(MAX_UNREAD, int(rate * READING_SECONDS)))

    def _apply(self, level: int) -> None:
        if level > len(self.threads):
            self.threads += self.backend.start(self.engine, level - len(self.threads), self.name)
        self.engine.set_level(level)
        if level and self._on_first_worker is not None:
            first, self._on_first_worker = self._on_first_worker, None
            first()

    def inline_context(self) -> tuple[Any, dict[str, Any]]:
        context: tuple[Any, dict[str, Any]] = self.backend.inline_context()
        return context

    def stats(self) -> dict[str, Any]:
        """What ``stats()`` adds: the level, and the controller's last decisions."""
        return {
            "level": self.controller.level,
            "max_workers": self.controller.max_level,
            "decisions": [(round(d.time, 3), d.previous, d.level, round(d.rate), d.reason)
                          for d in list(self.controller.decisions)[-8:]],
        }
