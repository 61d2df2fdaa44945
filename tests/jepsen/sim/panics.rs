//! Node panics, caught per thread: an invariant's `assert!` firing in a node
//! task fails the seed instead of dying unseen inside tokio.

thread_local! {
    /// Panics on this thread since the last [`take_panics`]: the simulation
    /// runs a whole cluster on one thread, and a node's task that panics
    /// (an invariant's `assert!`) would otherwise die unseen inside tokio.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records every panic of the process per thread (and still prints it).
pub fn capture_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            let place = info
                .location()
                .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
            PANICS.with(|p| p.borrow_mut().push(format!("{message}{place}")));
            default(info);
        }));
    });
}

/// How many panics this thread recorded since the last [`take_panics`].
pub fn panic_count() -> usize {
    PANICS.with(|p| p.borrow().len())
}

/// The panics recorded on this thread since the last call.
pub fn take_panics() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}
