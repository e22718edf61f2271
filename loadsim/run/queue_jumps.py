"""Queue jumps: checkouts granted while a client that asked earlier was still waiting.

SQLAlchemy's async pool is not first-come first-served. A connection handed back can be taken
at once by a coroutine that has only just asked, while the waiter woken for it finds the
pool empty again and goes to the back of the line. `WaitLine` keeps the clients waiting in
the order they asked and says, as each one is granted, whether someone who asked before it
is still waiting: that checkout jumped the queue.

Who is in the line:

- a client joins when it asks the pool for a connection (`client.waiting`);
- it leaves when its wait ends: granted (`client.acquired`), timed out (`client.timeout`),
  failed (`client.error`) or cancelled. A waiter that later times out was still waiting
  until then: a checkout granted before its timeout jumped it;
- it also leaves when the pool begins opening a new connection for it (overflow, or a pool
  not yet full): it no longer waits for a connection handed back, and its checkout, served
  by its own connect, takes no one's turn and is never a jump. (A connection the pool
  reopens after taking it from the line — `pool_recycle`, a failed pre-ping — counts the
  same way: a simplification.)

Each operation is O(1) amortised, however many clients wait: tickets are issued in
increasing order, the line is a deque in ticket order, and a client that left out of order
is dropped only when it reaches the front (or when such leftovers outnumber the waiters, in
one pass over the line).
"""

from __future__ import annotations

from collections import deque


class WaitLine:
    """The clients waiting for a connection, in the order they asked."""

    #: Leftovers (clients that left from the middle) tolerated beyond twice the waiters,
    #: before the line is rebuilt from the waiters alone.
    _SLACK = 64

    def __init__(self) -> None:
        self._tickets: dict[int, int] = {}  # client → its ticket, while it waits
        self._line: deque[tuple[int, int]] = deque()  # (ticket, client), oldest first
        self._next_ticket = 0

    def __len__(self) -> int:
        return len(self._tickets)

    def __contains__(self, client: object) -> bool:
        return client in self._tickets

    def join(self, client: int) -> None:
        """`client` asked for a connection: it joins at the back (a client already in the
        line asks again: its earlier wait is over, it joins anew)."""
        self._tickets.pop(client, None)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[client] = ticket
        self._line.append((ticket, client))

    def leave(self, client: int) -> bool:
        """`client` stops waiting. True when a client that asked before it is still
        waiting (granted now, it jumped the queue); False too when it was not in the line."""
        ticket = self._tickets.pop(client, None)
        if ticket is None:
            return False
        line, tickets = self._line, self._tickets
        while line and tickets.get(line[0][1]) != line[0][0]:
            line.popleft()  # left already (or asked again since): not waiting in that place
        if len(line) > 2 * len(tickets) + self._SLACK:
            # (the waiters' dict is in ticket order too: a client asking again is re-inserted)
            self._line = line = deque((t, c) for c, t in tickets.items())
        return bool(line) and line[0][0] < ticket
