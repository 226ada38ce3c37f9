//! The global flags a printed hint repeats (`--home`, `--server`, `--store`, `--blobs`,
//! `--ca-cert`).

/// The global flags given on this command line that choose where a command goes, as they
/// must be repeated for a printed hint to work when copied (`" --home /tmp/h"`, or empty).
/// A password in a PostgreSQL `--store` URL is shown as `***` (put it back, or better, in
/// `~/.pgpass` or `PGPASSWORD`). Tokens are never repeated (they come from `CROWNEST_TOKEN`
/// or a file).
pub(crate) fn global_flags() -> String {
    repeat(std::env::args().skip(1))
}

/// How a repeated flag's value is shown.
type Show = fn(&str) -> String;

/// The flags a hint repeats, and how each value is shown.
const REPEATED: [(&str, Show); 5] = [
    ("--home", str::to_owned),
    ("--server", str::to_owned),
    ("--store", crownest_store_postgres::redact_url),
    ("--blobs", str::to_owned),
    ("--ca-cert", str::to_owned),
];

/// [`global_flags`] of the arguments `args` (argv without the program).
fn repeat(args: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    let mut args = args;
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        for (flag, show) in REPEATED {
            let value = if a == flag {
                args.next()
            } else {
                a.strip_prefix(flag)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            };
            if let Some(v) = value {
                out.push_str(&format!(" {flag} {}", shell_quote(&show(&v))));
                break;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn of(args: &[&str]) -> String {
        repeat(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn the_location_flags_are_repeated_and_a_password_is_not() {
        assert_eq!(
            of(&["--home", "/tmp/h", "run", ".", "--", "x", "--home", "y"]),
            " --home /tmp/h"
        );
        assert_eq!(
            of(&[
                "--store=postgres://app:s3cr3t@db/crownest",
                "--blobs",
                "file:///shared/blobs",
                "run",
            ]),
            " --store 'postgres://app:***@db/crownest' --blobs file:///shared/blobs"
        );
        assert_eq!(
            of(&[
                "--server",
                "http://127.0.0.1:7700",
                "--ca-cert",
                "my ca.pem"
            ]),
            " --server http://127.0.0.1:7700 --ca-cert 'my ca.pem'"
        );
        // `--homework` is not `--home`.
        assert_eq!(of(&["--homework=x"]), "");
    }
}
