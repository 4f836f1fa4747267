"""The gRPC servicers: thin adapters from the wire to :class:`coordinator.engine.Coordinator`."""
