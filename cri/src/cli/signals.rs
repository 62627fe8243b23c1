//! Signals this command catches while a container's process runs in its foreground.

/// Runs `handler` on `sig` from now on. SA_RESTART: reads and the wait for the
/// process's exit go on after it ran.
///
/// The handler must be async-signal-safe (atomics and plain syscalls only).
pub fn catch(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid one to fill in; the caller vouches for
    // the handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
