//! The freedesktop Secret Service (GNOME Keyring, KWallet, KeePassXC) on the session bus: an
//! item whose attributes are `service` and `account`. Never holds the caller up: the whole
//! lookup, connection included, ends within [`TIMEOUT`]; the service is never started by D-Bus
//! activation (it must already run), nothing is ever unlocked (an item in a locked collection
//! counts as not found), and no prompt is ever shown. No thread is started.

use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::dbus::{Arg, Bus, CallError, Reply};

/// How long a lookup may take, connection included.
const TIMEOUT: Duration = Duration::from_millis(1500);

const SECRETS: &str = "org.freedesktop.secrets";
const SECRETS_PATH: &str = "/org/freedesktop/secrets";
const SERVICE: &str = "org.freedesktop.Secret.Service";

/// The secret of the first unlocked item with these attributes.
pub fn lookup(service: &str, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let started = Instant::now();
    search(service, account, started + TIMEOUT).map_err(|e| {
        // Whatever failed last, the cause was the time.
        if started.elapsed() >= TIMEOUT { format!("no answer within {} ms", TIMEOUT.as_millis()) } else { e }
    })
}

fn search(service: &str, account: &str, deadline: Instant) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let mut bus = Bus::session(deadline)?;
    let mut call = |path: &str, interface: &str, member: &str, args: &[Arg]| {
        bus.call(SECRETS, path, interface, member, args).map_err(|e| match e {
            // Calls are flagged NO_AUTO_START: a service that does not run is not started.
            CallError::Remote(name) if name.ends_with(".NameHasNoOwner") || name.ends_with(".ServiceUnknown") => {
                "no Secret Service runs on the session bus".to_owned()
            }
            e => format!("{interface}.{member}: {e}"),
        })
    };
    // The "plain" algorithm: the secret comes back as is, over the local bus socket. The
    // session ends with the connection.
    let opened = call(SECRETS_PATH, SERVICE, "OpenSession", &[Arg::Str("plain"), Arg::VariantStr("")])?;
    let session = session_of(&opened)?;
    let found =
        call(SECRETS_PATH, SERVICE, "SearchItems", &[Arg::Dict(&[("service", service), ("account", account)])])?;
    let (unlocked, locked) = items_of(&found)?;
    let Some(item) = unlocked.first() else {
        return if locked.is_empty() { Ok(None) } else { Err("the entry is in a locked collection".into()) };
    };
    let secret = call(item, "org.freedesktop.Secret.Item", "GetSecret", &[Arg::Path(&session)])?;
    secret_of(&secret).map(Some)
}

/// The session of an `OpenSession` answer `(v output, o result)`.
pub fn session_of(reply: &Reply) -> Result<String, String> {
    let mut reader = reply.reader();
    reader.skip_variant()?;
    reader.string()
}

/// The unlocked and locked items of a `SearchItems` answer `(ao, ao)`.
pub fn items_of(reply: &Reply) -> Result<(Vec<String>, Vec<String>), String> {
    let mut reader = reply.reader();
    Ok((reader.paths()?, reader.paths()?))
}

/// The value of a `GetSecret` answer, a Secret `(o session, ay parameters, ay value, s
/// content type)`, in a buffer wiped when dropped.
pub fn secret_of(reply: &Reply) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut reader = reply.reader();
    reader.align(8)?;
    reader.string()?;
    reader.bytes()?;
    reader.bytes()
}

#[cfg(test)]
mod tests {
    use super::super::dbus::{Writer, method_return, parse_message};
    use super::*;

    fn reply(signature: &str, body: Writer) -> Reply {
        parse_message(&method_return(1, signature, &body.0)).unwrap().body
    }

    #[test]
    fn answers_as_the_secret_service_gives_them() {
        let mut b = Writer::default();
        b.variant_str("");
        b.str("/org/freedesktop/secrets/session/1");
        assert_eq!(session_of(&reply("vo", b)).unwrap(), "/org/freedesktop/secrets/session/1");

        let mut b = Writer::default();
        b.paths(&["/org/freedesktop/secrets/collection/login/7"]);
        b.paths(&[]);
        let (unlocked, locked) = items_of(&reply("aoao", b)).unwrap();
        assert_eq!(
            (unlocked.as_slice(), locked.len()),
            (&["/org/freedesktop/secrets/collection/login/7".to_owned()][..], 0)
        );

        let mut b = Writer::default();
        b.align8();
        b.str("/org/freedesktop/secrets/session/1");
        b.bytes(b"");
        b.bytes(b"the-token");
        b.str("text/plain");
        let secret: Zeroizing<Vec<u8>> = secret_of(&reply("(oayays)", b)).unwrap();
        assert_eq!(secret.as_slice(), b"the-token");

        // The fuzz target's seeds are such answers too.
        let seed = |name: &str| {
            std::fs::read(format!("{}/../fuzz/seeds/dbus_reply/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        let answer = |name: &str| parse_message(&seed(name)).unwrap();
        assert_eq!(session_of(&answer("open_session").body).unwrap(), "/org/freedesktop/secrets/session/1");
        assert_eq!(items_of(&answer("search_items").body).unwrap().1.len(), 1);
        assert_eq!(secret_of(&answer("get_secret").body).unwrap().as_slice(), b"fuzz-secret-token");
        let error = answer("error");
        assert_eq!((error.kind, error.error.as_deref()), (3, Some("org.freedesktop.DBus.Error.ServiceUnknown")));

        // Truncated answers are errors, not panics.
        let mut b = Writer::default();
        b.str("/only/a/path");
        assert!(secret_of(&reply("(o)", b)).is_err());
    }
}
