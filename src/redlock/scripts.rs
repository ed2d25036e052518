//! The Lua scripts. Each touches only the keys passed in `KEYS` (Dragonfly rejects the others).

use std::sync::OnceLock;

use crate::conn::Script;

/// Compare-and-delete: the release.
pub const RELEASE: &str = "if redis.call('get',KEYS[1]) == ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end";

/// The release with a notification ([`RedlockOptions::wake_on_release`](crate::RedlockOptions::wake_on_release)):
/// compare-and-delete, then, only where it deleted, `PUBLISH` the token on the key's release
/// channel ([`RELEASE_CHANNEL_PREFIX`] and the key), which comes in as `KEYS[2]`: Dragonfly
/// runs a script only on what it declares (`server-ops.json`, `eval_del_and_publish`).
/// Answers as [`RELEASE`] does. The `PUBLISH` goes through `redis.pcall`, so that a user
/// without channel rights (Redis 7's default for a new ACL user) still releases: only the
/// notification is lost, and the waiters poll.
pub const RELEASE_NOTIFY: &str = "if redis.call('get',KEYS[1]) == ARGV[1] then \
redis.pcall('publish',KEYS[2],ARGV[1]) return redis.call('del',KEYS[1]) else return 0 end";

/// Every lock's release channel is this prefix followed by its key (key prefix included), so a
/// channel never meets an application's own channel of the lock's name.
pub const RELEASE_CHANNEL_PREFIX: &str = "dragonlock:released:";

/// Compare-and-`PEXPIRE`: the extension. A missing key compares unequal, so an expired lock is
/// never re-created.
pub const EXTEND: &str = "if redis.call('get',KEYS[1]) == ARGV[1] then return redis.call('pexpire',KEYS[1],ARGV[2]) else return 0 end";

/// All-or-none `SET NX PX` of every key.
pub const MULTI_ACQUIRE: &str =
    "for i=1,#KEYS do if redis.call('exists',KEYS[i]) == 1 then return 0 end end \
for i=1,#KEYS do redis.call('set',KEYS[i],ARGV[1],'PX',ARGV[2]) end return 1";

/// Compare-and-delete of every key that still holds the token; returns how many.
pub const MULTI_RELEASE: &str =
    "local n = 0 for i=1,#KEYS do if redis.call('get',KEYS[i]) == ARGV[1] then \
n = n + redis.call('del',KEYS[i]) end end return n";

/// [`MULTI_RELEASE`] with a notification on each key it deleted: `KEYS` holds the n lock keys,
/// then their n release channels in the same order.
pub const MULTI_RELEASE_NOTIFY: &str = "local m = #KEYS / 2 local n = 0 for i=1,m do \
if redis.call('get',KEYS[i]) == ARGV[1] then redis.pcall('publish',KEYS[m+i],ARGV[1]) \
n = n + redis.call('del',KEYS[i]) end end return n";

/// Extends every key only when all still hold the token.
pub const MULTI_EXTEND: &str =
    "for i=1,#KEYS do if redis.call('get',KEYS[i]) ~= ARGV[1] then return 0 end end \
for i=1,#KEYS do redis.call('pexpire',KEYS[i],ARGV[2]) end return 1";

/// Who holds a key, and for how long, in one atomic step (a `GET` and a `PTTL` sent apart could
/// pair one holder's token with the next holder's ttl): nil when the key is missing, else
/// `{value, pttl}` (`pttl` -1 for a key without expiry).
pub const HOLDER: &str = "local v = redis.call('get',KEYS[1]) if not v then return false end \
return {v, redis.call('pttl',KEYS[1])}";

/// The prepared scripts.
pub(crate) struct Scripts {
    pub release: Script,
    pub release_notify: Script,
    pub extend: Script,
    pub multi_acquire: Script,
    pub multi_release: Script,
    pub multi_release_notify: Script,
    pub multi_extend: Script,
    pub holder: Script,
    pub fence_acquire: Script,
    pub fence_acquire_many: Script,
    pub fence_write: Script,
    pub fence_reseed: Script,
}

pub(crate) fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        release: Script::new(RELEASE),
        release_notify: Script::new(RELEASE_NOTIFY),
        extend: Script::new(EXTEND),
        multi_acquire: Script::new(MULTI_ACQUIRE),
        multi_release: Script::new(MULTI_RELEASE),
        multi_release_notify: Script::new(MULTI_RELEASE_NOTIFY),
        multi_extend: Script::new(MULTI_EXTEND),
        holder: Script::new(HOLDER),
        fence_acquire: Script::new(super::fence::FENCE_ACQUIRE),
        fence_acquire_many: Script::new(super::fence::FENCE_ACQUIRE_MANY),
        fence_write: Script::new(super::fence::FENCE_WRITE),
        fence_reseed: Script::new(super::fence::FENCE_RESEED),
    })
}
