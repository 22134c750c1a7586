//! reference model
