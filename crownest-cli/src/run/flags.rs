//! The global flags (`--home`, `--server`) a printed hint repeats.

/// The `--home` / `--server` given on this command line, as they must be repeated for a
/// printed hint to work when copied (`" --home /tmp/h"`, or empty). Tokens are never
/// repeated (they come from `CROWNEST_TOKEN` or a file).
pub(crate) fn global_flags() -> String {
    let mut out = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        for flag in ["--home", "--server"] {
            if a == flag {
                if let Some(v) = args.next() {
                    out.push_str(&format!(" {flag} {}", shell_quote(&v)));
                }
            } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                out.push_str(&format!(" {flag} {}", shell_quote(v)));
            }
        }
    }
    out
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
