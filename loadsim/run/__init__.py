"""The run side: the server, the engine and its pool, the monitor, the clients, faults,
metrics, the event stream and its writer, the dashboard, and the lifecycle of a run or a fleet.
"""
