//! Cross-provider behaviour suite.
