//! A background thread outlives a bug in one of its rounds: the round that panicked is logged
//! and given up, and the thread goes on with the next one. Without this, one panic ended the
//! thread for the rest of the mount: with the group-commit thread gone, published versions
//! were no longer synced. (Requests have the same guard in fuser's `dispatch`.)

/// Runs one round of the background work `what` (a thread's name), under a guard: `None` if it
/// panicked. The panic's message and place are logged by the panic hook (cli) or on stderr.
///
/// In a build with the `failpoints` feature, fail point `round::WHAT` makes the round panic
/// (tests/faults.rs).
pub fn guarded_round<T>(what: &str, round: impl FnOnce() -> T) -> Option<T> {
    let round = || {
        #[cfg(feature = "failpoints")]
        fail::fail_point!(&format!("round::{what}"));
        round()
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(round)) {
        Ok(done) => Some(done),
        Err(_) => {
            log::error!(
                "{what}: a round panicked (a bug; the panic message is above); carrying on"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_that_panics_is_given_up_and_the_next_one_runs() {
        let mut done = Vec::new();
        for i in 0..3 {
            let r = guarded_round("test", || {
                assert_ne!(i, 1, "round {i} fails");
                i
            });
            done.push(r);
        }
        assert_eq!(done, [Some(0), None, Some(2)]);
    }
}
