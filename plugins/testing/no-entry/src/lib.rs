//! A shared library without the entry symbol: the host must refuse it.
#[no_mangle]
pub extern "C" fn tern_something_else() -> i32 {
    42
}
