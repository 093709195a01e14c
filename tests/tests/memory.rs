//! The behaviour suite on the in-process provider.

eventing_tests::conformance_tests!(eventing_tests::MemoryHarness);
