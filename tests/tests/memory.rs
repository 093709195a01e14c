//! The behaviour suite on the in-process provider.

eventing_test::conformance_tests!(eventing_test::MemoryHarness);
