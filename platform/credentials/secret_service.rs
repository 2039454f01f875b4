//! The freedesktop Secret Service (GNOME Keyring, KWallet, KeePassXC) on the session bus: an
//! item whose attributes are `service` and `account`. Never holds the caller up: the whole
//! lookup, connection included, ends within [`TIMEOUT`]; the service is never started by D-Bus
//! activation (it must already run), nothing is ever unlocked (an item in a locked collection
//! counts as not found), and no prompt is ever shown. No thread is started.

use std::time::{Duration, Instant};

use super::dbus::{Arg, Bus, CallError};

/// How long a lookup may take, connection included.
const TIMEOUT: Duration = Duration::from_millis(1500);

const SECRETS: &str = "org.freedesktop.secrets";
const SECRETS_PATH: &str = "/org/freedesktop/secrets";
const SERVICE: &str = "org.freedesktop.Secret.Service";

/// The secret of the first unlocked item with these attributes.
pub fn lookup(service: &str, account: &str) -> Result<Option<Vec<u8>>, String> {
    let started = Instant::now();
    search(service, account, started + TIMEOUT).map_err(|e| {
        // Whatever failed last, the cause was the time.
        if started.elapsed() >= TIMEOUT {
            format!("no answer within {} ms", TIMEOUT.as_millis())
        } else {
            e
        }
    })
}

fn search(service: &str, account: &str, deadline: Instant) -> Result<Option<Vec<u8>>, String> {
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
    let mut reader = opened.reader();
    reader.skip_variant()?;
    let session = reader.string()?;
    let found = call(SECRETS_PATH, SERVICE, "SearchItems", &[Arg::Dict(&[("service", service), ("account", account)])])?;
    let mut reader = found.reader();
    let (unlocked, locked) = (reader.paths()?, reader.paths()?);
    let Some(item) = unlocked.first() else {
        return if locked.is_empty() { Ok(None) } else { Err("the entry is in a locked collection".into()) };
    };
    // A Secret: (session, parameters, value, content type).
    let secret = call(item, "org.freedesktop.Secret.Item", "GetSecret", &[Arg::Path(&session)])?;
    let mut reader = secret.reader();
    reader.align(8)?;
    reader.string()?;
    reader.bytes()?;
    Ok(Some(reader.bytes()?))
}
