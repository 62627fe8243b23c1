//! nftables from this process: libnftables, the library the `nft` command is built on
//! (Debian's nftables package depends on it), loaded at run time. A change is then one
//! netlink transaction sent from here, not a process started per change: about a
//! tenth of a millisecond instead of a few. Without the library the `nft` command
//! is run, as before.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxFlag = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxFlag,
    buffer_error: CtxFlag,
    error_buffer: CtxBuffer,
    run_cmd: RunCmd,
}

/// libnftables keeps some state of its own behind every context (its symbol tables
/// are set up on first use): one call at a time in this process.
static CALLS: Mutex<()> = Mutex::new(());

fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        if std::env::var_os("MINIPOD_NFT_PROCESS").is_some() {
            return None; // the baseline of the firewall benchmark
        }
        // SAFETY: dlopen of a library by its soname, dlsym of functions whose C
        // signatures the types above copy from <nftables/libnftables.h>.
        unsafe {
            let handle = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if handle.is_null() {
                return None;
            }
            let sym = |name: &CStr| {
                let p = libc::dlsym(handle, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(Api {
                ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
                buffer_output: std::mem::transmute::<*mut c_void, CtxFlag>(sym(c"nft_ctx_buffer_output")?),
                buffer_error: std::mem::transmute::<*mut c_void, CtxFlag>(sym(c"nft_ctx_buffer_error")?),
                error_buffer: std::mem::transmute::<*mut c_void, CtxBuffer>(sym(c"nft_ctx_get_error_buffer")?),
                run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(c"nft_run_cmd_from_buffer")?),
            })
        }
    })
    .as_ref()
}

/// A libnftables context whose netlink socket was opened in one network namespace:
/// it changes that namespace's ruleset from whichever thread uses it.
pub(super) struct Session {
    ctx: NonNull<c_void>,
    api: &'static Api,
}

// SAFETY: the context is used by one thread at a time (the firewall keeps it behind
// a mutex, and every call holds CALLS); nothing in it is bound to the thread that
// made it, only its socket to the namespace.
unsafe impl Send for Session {}

impl Session {
    /// Opens a context in the calling thread's network namespace; None without the
    /// library.
    pub(super) fn open() -> Option<Session> {
        let api = api()?;
        let _calls = CALLS.lock().ok()?;
        // SAFETY: 0 is NFT_CTX_DEFAULT; the buffer calls only set flags on the context.
        unsafe {
            let ctx = NonNull::new((api.ctx_new)(0))?;
            (api.buffer_output)(ctx.as_ptr());
            (api.buffer_error)(ctx.as_ptr());
            Some(Session { ctx, api })
        }
    }

    /// Runs `script` (what `nft -f` reads) as one transaction; the error is what `nft`
    /// would have printed.
    pub(super) fn run(&mut self, script: &str) -> Result<(), String> {
        let script = CString::new(script).map_err(|_| "the script holds a NUL byte".to_string())?;
        let _calls = CALLS.lock().map_err(|_| "a libnftables call panicked".to_string())?;
        // SAFETY: a live context and a NUL-terminated buffer; the error buffer is
        // owned by the context and copied before the next call.
        unsafe {
            if (self.api.run_cmd)(self.ctx.as_ptr(), script.as_ptr()) == 0 {
                return Ok(());
            }
            let err = (self.api.error_buffer)(self.ctx.as_ptr());
            Err(if err.is_null() { "nft failed".into() } else { CStr::from_ptr(err).to_string_lossy().into_owned() })
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _calls = CALLS.lock();
        // SAFETY: the context is freed once, by its only owner.
        unsafe { (self.api.ctx_free)(self.ctx.as_ptr()) }
    }
}
