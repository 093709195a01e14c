//! The issue 6 features (event log, versions, `{env}` names, singleton, trace
//! context, codecs, metrics, command line) on the in-process provider.

eventing_test::features_tests!(eventing_test::MemoryHarness);
