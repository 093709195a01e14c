//! The whole conformance kit on Redis Streams (`EVENTING_REDIS_URL`, default
//! `redis://127.0.0.1:6390`, the redis-server `scripts/redis.sh` starts, with AOF and
//! `appendfsync always`): the behaviour suite, the features suite and the five fault
//! tests (`-- --nocapture` shows their `fault <test> redis: ...` lines). The
//! broker-restart fault test restarts the server on its AOF: durable events
//! acknowledged before the restart are all handled after it.
#![cfg(feature = "redis")]

eventing_test::provider_kit!(eventing_tests::redis::RedisHarness::from_env());
