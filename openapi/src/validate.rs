//! Request matching and validation, response validation and minimisation, per operation.
