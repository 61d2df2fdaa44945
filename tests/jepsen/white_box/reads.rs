//! The read oracle: a successful read reflects every index committed
//! anywhere when it was invoked.

use lattice::raft::LogIndex;

use super::WhiteBoxObserver;

impl WhiteBoxObserver {
    /// The read oracle: a read invoked when `commit_at_invoke` was committed
    /// somewhere must reflect at least that index.
    pub fn check_read(&self, client: u64, key: &str, commit_at_invoke: LogIndex, applied: u64) {
        let mut w = self.0.lock().expect("white box");
        w.reads_checked += 1;
        if applied < commit_at_invoke.0 {
            let message = format!(
                "stale read: client {client} read {key} at applied index {applied}, but index {commit_at_invoke} was committed when the read was invoked"
            );
            w.violate(message);
        }
    }
}
