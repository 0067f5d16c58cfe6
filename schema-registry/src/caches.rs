//! In-memory indexes the registry keeps beside its store for the citizen side: the hidings and
//! the authorisations of each person, and verified node signing keys. The registry is the only
//! writer of its store and every change to these documents goes through it (under its write
//! lock), so each index is loaded once from the store and then updated with each change.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::citizen::hiding::Hiding;

/// The registry's in-memory indexes.
#[derive(Default)]
pub struct Caches {
    /// Hidings by person, loaded on first use.
    pub(crate) hidings: Mutex<Option<HashMap<String, Vec<Hiding>>>>,
    /// Authorisation ids by person, loaded on first use.
    pub(crate) authorisations: Mutex<Option<HashMap<String, Vec<String>>>>,
    /// Verified signing keys (see `signing_history`).
    pub(crate) signing_keys: crate::access_log::signing_history::KeyCache,
}
