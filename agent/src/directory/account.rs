//! An account as the agent reads it before and after a job.

use ldap3::SearchEntry;
use pwrelay_proto::agent::v1 as pb;

/// userAccountControl: ACCOUNTDISABLE.
const UAC_ACCOUNTDISABLE: u32 = 0x2;
/// userAccountControl: DONT_EXPIRE_PASSWD.
const UAC_DONT_EXPIRE_PASSWD: u32 = 0x1_0000;
/// msDS-User-Account-Control-Computed: LOCKOUT.
const COMPUTED_LOCKOUT: u32 = 0x10;
/// msDS-User-Account-Control-Computed: PASSWORD_EXPIRED.
const COMPUTED_PASSWORD_EXPIRED: u32 = 0x80_0000;

/// The attributes read for every account.
pub const ATTRIBUTES: &[&str] = &[
    "sAMAccountName",
    "userPrincipalName",
    "displayName",
    "givenName",
    "sn",
    "userAccountControl",
    "msDS-User-Account-Control-Computed",
    "adminCount",
    "pwdLastSet",
    "lockoutTime",
    "msDS-ResultantPSO",
    "objectSid",
    "primaryGroupID",
    "memberOf",
    "lastLogonTimestamp",
    "lastLogon",
    "logonCount",
];

/// What a write or an unlock changes, read back after it: only these, so the read-back is the
/// cheapest search that still shows the DC's view of the change.
pub const READ_BACK_ATTRIBUTES: &[&str] =
    &["pwdLastSet", "lockoutTime", "userAccountControl", "msDS-User-Account-Control-Computed"];

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Account {
    /// Distinguished name.
    pub dn: String,
    /// Whether the account has ever signed in (`lastLogonTimestamp`, `lastLogon` or `logonCount`
    /// set, as far as the DC that answered knows).
    pub signed_in: bool,
    /// sAMAccountName.
    pub sam_account_name: String,
    /// userPrincipalName.
    pub upn: Option<String>,
    /// displayName.
    pub display_name: Option<String>,
    /// givenName.
    pub given_name: Option<String>,
    /// sn.
    pub surname: Option<String>,
    /// userAccountControl.
    pub user_account_control: u32,
    /// msDS-User-Account-Control-Computed.
    pub computed_account_control: u32,
    /// adminCount = 1 (stamped by AdminSDHolder on protected accounts).
    pub admin_count: bool,
    /// pwdLastSet (0 = must change at next logon).
    pub pwd_last_set: i64,
    /// lockoutTime (0 or absent = not locked by time).
    pub lockout_time: i64,
    /// DN of the fine-grained password policy that applies, if any.
    pub resultant_pso: Option<String>,
    /// The account's RID (last sub-authority of objectSid).
    pub rid: Option<u32>,
    /// The SID of the account's primary group (its domain's SID and primaryGroupID): a membership
    /// that no `member` attribute, and so neither memberOf nor an in-chain search, shows.
    pub primary_group_sid: Option<String>,
    /// The DNs of the groups the account is a direct member of (memberOf), or `None` when the DC
    /// sent only part of them (a ranged value, beyond 1500) so that they cannot be relied on.
    pub member_of: Option<Vec<String>>,
}

impl Account {
    /// Reads an account from a search entry that asked for [`ATTRIBUTES`].
    pub(crate) fn from_entry(entry: SearchEntry) -> Self {
        let text = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).cloned();
        let number = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let sid = entry.bin_attrs.get("objectSid").and_then(|v| v.first());
        let rid = sid.and_then(|sid| sid_rid(sid));
        let primary_group_sid =
            sid.and_then(|sid| sid_text(sid)).zip(text("primaryGroupID")).and_then(|(own, group)| {
                let domain = own.rsplit_once('-')?.0;
                group.parse::<u32>().ok().map(|rid| format!("{domain}-{rid}"))
            });
        let ranged = entry.attrs.keys().any(|name| name.to_ascii_lowercase().starts_with("memberof;range="));
        let member_of = (!ranged).then(|| entry.attrs.get("memberOf").cloned().unwrap_or_default());
        Self {
            sam_account_name: text("sAMAccountName").unwrap_or_default(),
            upn: text("userPrincipalName"),
            display_name: text("displayName"),
            given_name: text("givenName"),
            surname: text("sn"),
            user_account_control: u32::try_from(number("userAccountControl")).unwrap_or(0),
            computed_account_control: u32::try_from(number("msDS-User-Account-Control-Computed")).unwrap_or(0),
            admin_count: number("adminCount") == 1,
            pwd_last_set: number("pwdLastSet"),
            lockout_time: number("lockoutTime"),
            resultant_pso: text("msDS-ResultantPSO"),
            rid,
            primary_group_sid,
            member_of,
            signed_in: number("lastLogonTimestamp") > 0 || number("lastLogon") > 0 || number("logonCount") > 0,
            dn: entry.dn,
        }
    }

    /// This account with the values of [`READ_BACK_ATTRIBUTES`] from `entry` (absent ones read as
    /// 0, as in [`Account::from_entry`]).
    pub(crate) fn refreshed(&self, entry: &SearchEntry) -> Self {
        let number =
            |name: &str| entry.attrs.get(name).and_then(|v| v.first()).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        Self {
            user_account_control: u32::try_from(number("userAccountControl")).unwrap_or(0),
            computed_account_control: u32::try_from(number("msDS-User-Account-Control-Computed")).unwrap_or(0),
            pwd_last_set: number("pwdLastSet"),
            lockout_time: number("lockoutTime"),
            ..self.clone()
        }
    }

    /// ACCOUNTDISABLE is set.
    pub fn disabled(&self) -> bool {
        self.user_account_control & UAC_ACCOUNTDISABLE != 0
    }

    /// DONT_EXPIRE_PASSWD is set.
    pub fn password_never_expires(&self) -> bool {
        self.user_account_control & UAC_DONT_EXPIRE_PASSWD != 0
    }

    /// The DC reports the account locked out.
    pub fn locked_out(&self) -> bool {
        self.computed_account_control & COMPUTED_LOCKOUT != 0
    }

    /// The user must change the password at next logon.
    pub fn must_change_password(&self) -> bool {
        self.pwd_last_set == 0 || self.computed_account_control & COMPUTED_PASSWORD_EXPIRED != 0
    }

    /// The wire form of the state.
    pub fn state(&self) -> pb::AccountState {
        pb::AccountState {
            locked_out: self.locked_out(),
            must_change_password: self.must_change_password(),
            disabled: self.disabled(),
            password_never_expires: self.password_never_expires(),
        }
    }
}

/// The RID of a binary SID (its last sub-authority, little-endian).
fn sid_rid(sid: &[u8]) -> Option<u32> {
    let count = usize::from(*sid.get(1)?);
    let start = 8 + 4 * count.checked_sub(1)?;
    let bytes: [u8; 4] = sid.get(start..start + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// The text form (`S-1-5-21-...`) of a binary SID.
pub(crate) fn sid_text(sid: &[u8]) -> Option<String> {
    let revision = *sid.first()?;
    let count = usize::from(*sid.get(1)?);
    let authority = sid.get(2..8)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut text = format!("S-{revision}-{authority}");
    for i in 0..count {
        let bytes: [u8; 4] = sid.get(8 + 4 * i..12 + 4 * i)?.try_into().ok()?;
        text.push_str(&format!("-{}", u32::from_le_bytes(bytes)));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // S-1-5-21-3160839837-2088028647-963206401-500 in binary form.
    const SID: [u8; 28] = [
        1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 0x9d, 0x96, 0x66, 0xbc, 0xe7, 0xc9, 0x74, 0x7c, 0x01, 0x5d, 0x69, 0x39,
        0xf4, 0x01, 0, 0,
    ];

    #[test]
    fn sids_render_and_yield_their_rid() {
        assert_eq!(sid_text(&SID).as_deref(), Some("S-1-5-21-3160839837-2088028647-963206401-500"));
        assert_eq!(sid_rid(&SID), Some(500));
        assert_eq!(sid_rid(&SID[..10]), None);
        assert_eq!(sid_text(&[]), None);
    }

    #[test]
    fn flags_are_read_from_the_right_attributes() {
        let account = Account {
            user_account_control: 0x2 | 0x1_0000,
            computed_account_control: 0x10,
            pwd_last_set: 5,
            ..Account::default()
        };
        assert!(account.disabled() && account.password_never_expires() && account.locked_out());
        assert!(!account.must_change_password());
        assert!(Account { pwd_last_set: 0, ..Account::default() }.must_change_password());
    }
}
