//! Who else is in the call, merged from the two places that know: Matrix call memberships
//! (per device) and LiveKit participants (per identity `@user:server:DEVICE`).
//!
//! Pure bookkeeping: a user counts as present while any of their devices is seen by either
//! source; the machine hears `MemberJoined` when a user's first device appears and `MemberLeft`
//! when their last one is gone (a resident switching from phone to laptop is not a leave).

use std::collections::{BTreeMap, BTreeSet};

/// Which side reported a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Matrix,
    LiveKit,
}

/// A change of who is present, by Matrix user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined(String),
    Left(String),
}

#[derive(Debug, Default)]
pub struct Presence {
    users: BTreeMap<String, BTreeSet<(String, Source)>>,
}

impl Presence {
    /// A device appeared; `Some(Joined)` if it is the user's first.
    pub fn add(&mut self, user: &str, device: &str, source: Source) -> Option<Change> {
        let devices = self.users.entry(user.to_owned()).or_default();
        let first = devices.is_empty();
        devices.insert((device.to_owned(), source));
        first.then(|| Change::Joined(user.to_owned()))
    }

    /// A device went away; `Some(Left)` if it was the user's last.
    pub fn remove(&mut self, user: &str, device: &str, source: Source) -> Option<Change> {
        let devices = self.users.get_mut(user)?;
        devices.remove(&(device.to_owned(), source));
        if devices.is_empty() {
            self.users.remove(user);
            Some(Change::Left(user.to_owned()))
        } else {
            None
        }
    }

    /// Forgets everyone (after leaving a call).
    pub fn clear(&mut self) {
        self.users.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_leaves_only_when_the_last_device_is_gone() {
        let mut p = Presence::default();
        assert_eq!(
            p.add("@a:x", "PHONE", Source::Matrix),
            Some(Change::Joined("@a:x".into()))
        );
        assert_eq!(p.add("@a:x", "PHONE", Source::LiveKit), None);
        assert_eq!(p.add("@a:x", "LAPTOP", Source::Matrix), None);
        assert_eq!(p.remove("@a:x", "PHONE", Source::Matrix), None);
        assert_eq!(p.remove("@a:x", "PHONE", Source::LiveKit), None);
        assert_eq!(
            p.remove("@a:x", "LAPTOP", Source::Matrix),
            Some(Change::Left("@a:x".into()))
        );
        assert_eq!(
            p.remove("@a:x", "LAPTOP", Source::Matrix),
            None,
            "no double leave"
        );
    }

    #[test]
    fn clear_forgets_everyone() {
        let mut p = Presence::default();
        p.add("@a:x", "D", Source::Matrix);
        p.clear();
        assert_eq!(
            p.add("@a:x", "D", Source::Matrix),
            Some(Change::Joined("@a:x".into()))
        );
    }
}
