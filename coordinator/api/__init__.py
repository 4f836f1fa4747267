"""The gRPC servicers: thin adapters from the wire to :class:`conveyor.coordinator.engine.Coordinator`."""
