//! AMQP 0-9-1 provider for eventing (work in progress).
