"""The collector: turns the operator's own Bitcoin Core into local training data.

* ``store``: the SQLite store (blocks, transactions, mempool snapshots, fee and operator labels).
* ``follower``: ``Collector`` polls Core over JSON-RPC (blocks with reorgs, the mempool incrementally).
* ``replies``: the checked fields of Core's replies; ``zmq_wake``: optional ZMQ ``sequence`` wake-ups.
* ``labels``: block thresholds and fee labels (the simulator's definition), the operator's label file.
* ``datasets``: ``task_splits_from_store``: task arrays with time splits, as ``core.data.datasets``.
* ``status``: what ``anya-fl collect status`` shows.
* ``bench``: ``measure_ingest`` / ``measure_mempool_rss`` for ``anya-fl bench collector``.
"""
