//! Object-id translation for a relay that owns objects of its own on the server connection.
//!
//! A relay that forwards ids one to one can never create an object its client does not see:
//! any id it picks may be the client's next. With translation, the client connection and the
//! server connection each have their own client-allocated id space, and the relay maps between
//! them:
//!
//! ```text
//!  client ids (1..)      IdTranslation                 server-side ids (1..)
//!   4 wl_shm_pool  ───▶  4 ↔ 9  (after a pool resize)  9 wl_shm_pool (the relay's new pool)
//!                        -  ↔ 4  (the relay's)          4 wl_shm_pool (destroyed, awaiting delete_id)
//! ```
//!
//! - Ids the client allocates get a server-side id from this map when the request creating them
//!   is forwarded ([`IdTranslation::bind_new`]); the relay's own objects get one from the same
//!   allocator ([`IdTranslation::new_private`]).
//! - Ids the server allocates (`0xff000000..`, created by events) get an id in the server range
//!   of the client's connection, which the relay allocates as the server would
//!   ([`IdTranslation::bind_server_new`]); the relay can also give the client a server-range
//!   object of its own making ([`IdTranslation::new_server_object`], e.g. a buffer it created
//!   on the server connection with a client-range id). Server-range ids are free again when
//!   their object is destroyed ([`IdTranslation::server_object_destroyed`]).
//! - A client-range server-side id is released when the server's `wl_display.delete_id` names
//!   it ([`IdTranslation::server_deleted`]), which also says which client id to release, if
//!   any: a private object's `delete_id` is the relay's alone.
//!
//! The allocator reuses freed ids last-freed first, as libwayland's client does, and never skips
//! ahead, as libwayland's server requires. Lookups are a vector index: no hashing and no
//! allocation per message.

use crate::objects::SERVER_ID_START;
use crate::tables::{Interface, same_interface};
use crate::wire::{Arg, HEADER_SIZE, ObjectId};

/// What a server-side id stands for.
#[derive(Debug, Clone, Copy)]
pub enum ServerSide {
    /// The client's object with this id.
    Client(ObjectId),
    /// An object of the relay's own, of this interface and version.
    Private(&'static Interface, u32),
    /// Nothing: the id is free or past the end.
    Unknown,
}

impl PartialEq for ServerSide {
    fn eq(&self, other: &ServerSide) -> bool {
        match (self, other) {
            (ServerSide::Client(a), ServerSide::Client(b)) => a == b,
            (ServerSide::Private(a, v), ServerSide::Private(b, w)) => {
                same_interface(a, b) && v == w
            }
            (ServerSide::Unknown, ServerSide::Unknown) => true,
            _ => false,
        }
    }
}

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client object has no server-side object.
    #[error("object {0} has no object on the server connection")]
    Unmapped(ObjectId),
    /// A client id to bind is already bound.
    #[error("object {0} already has an object on the server connection")]
    AlreadyBound(ObjectId),
    /// A client id to bind is in the server's range.
    #[error("new id {0} is not in the client's range")]
    ServerRange(ObjectId),
    /// A server id to bind is in the client's range.
    #[error("new id {0} is not in the server's range")]
    ClientRange(ObjectId),
    /// No server-side id is left.
    #[error("no server-side id left (limit {0})")]
    Exhausted(usize),
    /// `delete_id` for a server-side id that is not allocated.
    #[error("delete_id for {0}, which the relay did not allocate")]
    NotAllocated(u32),
    /// The relay may hold no more objects of its own.
    #[error("more than {0} objects of the relay's own")]
    TooManyPrivate(usize),
}

/// Marks a server-side slot that holds a private object (its interface is in `private`).
const PRIVATE: u32 = u32::MAX;

/// The id map between one client connection and its server connection.
#[derive(Debug, Clone)]
pub struct IdTranslation {
    /// Server-side id of each client id (client range); 0 = none.
    to_server: Vec<u32>,
    /// Client id of each server-side id (client range); 0 = free, [`PRIVATE`] = the relay's.
    to_client: Vec<u32>,
    /// The relay's own objects: (server-side id, interface, version). Few, so a list.
    private: Vec<(u32, &'static Interface, u32)>,
    /// Freed server-side ids, reused last-freed first.
    free: Vec<u32>,
    /// Client id (server range) of each server-allocated id, by `id - SERVER_ID_START`; 0 = none.
    s_to_client: Vec<u32>,
    /// Server-side id (either range) of each server-range client id, by `id - SERVER_ID_START`.
    s_to_server: Vec<u32>,
    /// Freed server-range client ids (as indices), reused last-freed first.
    s_free: Vec<u32>,
    max_ids: usize,
    max_private: usize,
}

impl IdTranslation {
    /// A map where `wl_display` (1) is 1 on both sides, with at most `max_ids` server-side ids
    /// (index 0 included) and `max_private` objects of the relay's own.
    pub fn new(max_ids: usize, max_private: usize) -> IdTranslation {
        IdTranslation {
            to_server: vec![0, 1],
            to_client: vec![0, 1],
            private: Vec::new(),
            free: Vec::new(),
            s_to_client: Vec::new(),
            s_to_server: Vec::new(),
            s_free: Vec::new(),
            max_ids: max_ids.max(2),
            max_private,
        }
    }

    /// Bytes one id of each side's table takes.
    pub const BYTES_PER_ID: usize = 2 * std::mem::size_of::<u32>();

    /// Ids the tables have room for now, both sides (memory: this × 4 bytes).
    pub fn id_slots(&self) -> usize {
        self.to_server.len()
            + self.to_client.len()
            + self.s_to_client.len()
            + self.s_to_server.len()
    }

    /// Objects of the relay's own.
    pub fn private_objects(&self) -> usize {
        self.private.len()
    }

    /// The server-side id of the client's `id`.
    #[inline]
    pub fn to_server(&self, id: ObjectId) -> Option<ObjectId> {
        let raw = id.get();
        if raw >= SERVER_ID_START {
            let index = (raw - SERVER_ID_START) as usize;
            return ObjectId::new(*self.s_to_server.get(index)?);
        }
        ObjectId::new(*self.to_server.get(raw as usize)?)
    }

    /// What the server-side `id` stands for.
    #[inline]
    pub fn to_client(&self, id: ObjectId) -> ServerSide {
        let raw = id.get();
        if raw >= SERVER_ID_START {
            let index = (raw - SERVER_ID_START) as usize;
            let client = self.s_to_client.get(index).copied().and_then(ObjectId::new);
            return client.map_or(ServerSide::Unknown, ServerSide::Client);
        }
        match self.to_client.get(raw as usize) {
            Some(&PRIVATE) => self
                .private
                .iter()
                .find(|(s, _, _)| *s == raw)
                .map_or(ServerSide::Unknown, |(_, i, v)| ServerSide::Private(i, *v)),
            Some(&c) => ObjectId::new(c).map_or(ServerSide::Unknown, ServerSide::Client),
            None => ServerSide::Unknown,
        }
    }

    fn allocate(&mut self) -> Result<u32, TranslateError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        let next = self.to_client.len();
        if next >= self.max_ids {
            return Err(TranslateError::Exhausted(self.max_ids));
        }
        self.to_client.push(0);
        Ok(next as u32)
    }

    /// Gives the client's new object `id` a server-side id.
    pub fn bind_new(&mut self, id: ObjectId) -> Result<ObjectId, TranslateError> {
        let raw = id.get();
        if raw >= SERVER_ID_START {
            return Err(TranslateError::ServerRange(id));
        }
        let index = raw as usize;
        if self.to_server.get(index).is_some_and(|s| *s != 0) {
            return Err(TranslateError::AlreadyBound(id));
        }
        // The client map admitted the id, so it is at most one past its end; the table follows.
        if index >= self.to_server.len() {
            if index >= self.max_ids {
                return Err(TranslateError::Exhausted(self.max_ids));
            }
            self.to_server.resize(index + 1, 0);
        }
        let server = self.allocate()?;
        self.to_server[index] = server;
        self.to_client[server as usize] = raw;
        ObjectId::new(server).ok_or(TranslateError::Unmapped(id))
    }

    /// A server-side id for an object of the relay's own.
    pub fn new_private(
        &mut self,
        interface: &'static Interface,
        version: u32,
    ) -> Result<ObjectId, TranslateError> {
        if self.private.len() >= self.max_private {
            return Err(TranslateError::TooManyPrivate(self.max_private));
        }
        let server = self.allocate()?;
        self.to_client[server as usize] = PRIVATE;
        self.private.push((server, interface, version));
        ObjectId::new(server).ok_or(TranslateError::NotAllocated(server))
    }

    /// Points the client's `id` at `replacement` (a private object made for it), and makes its
    /// old server-side object private (`interface`, `version`): the relay destroys that one.
    pub fn rebind(
        &mut self,
        id: ObjectId,
        replacement: ObjectId,
        interface: &'static Interface,
        version: u32,
    ) -> Result<(), TranslateError> {
        let old = self.to_server(id).ok_or(TranslateError::Unmapped(id))?;
        let new = replacement.get();
        let at = self.private.iter().position(|(s, _, _)| *s == new);
        let Some(at) = at else {
            return Err(TranslateError::NotAllocated(new));
        };
        self.private[at] = (old.get(), interface, version);
        self.to_client[old.get() as usize] = PRIVATE;
        self.to_client[new as usize] = id.get();
        self.to_server[id.get() as usize] = new;
        Ok(())
    }

    /// Keeps the client's `id`'s server-side object as the relay's own and releases the client
    /// id (the relay sends the client its `delete_id`). Returns the server-side id.
    pub fn detach(
        &mut self,
        id: ObjectId,
        interface: &'static Interface,
        version: u32,
    ) -> Result<ObjectId, TranslateError> {
        if self.private.len() >= self.max_private {
            return Err(TranslateError::TooManyPrivate(self.max_private));
        }
        let server = self.to_server(id).ok_or(TranslateError::Unmapped(id))?;
        if server.get() >= SERVER_ID_START {
            return Err(TranslateError::ServerRange(id));
        }
        self.to_client[server.get() as usize] = PRIVATE;
        self.private.push((server.get(), interface, version));
        self.to_server[id.get() as usize] = 0;
        Ok(server)
    }

    fn allocate_server_range(&mut self) -> Result<u32, TranslateError> {
        if let Some(index) = self.s_free.pop() {
            return Ok(index);
        }
        let next = self.s_to_server.len();
        if next >= self.max_ids {
            return Err(TranslateError::Exhausted(self.max_ids));
        }
        self.s_to_server.push(0);
        Ok(next as u32)
    }

    /// Gives the server's new object `id` (server range, from an event) a client id.
    pub fn bind_server_new(&mut self, id: ObjectId) -> Result<ObjectId, TranslateError> {
        let raw = id.get();
        if raw < SERVER_ID_START {
            return Err(TranslateError::ClientRange(id));
        }
        let index = (raw - SERVER_ID_START) as usize;
        if self.s_to_client.get(index).is_some_and(|c| *c != 0) {
            return Err(TranslateError::AlreadyBound(id));
        }
        if index >= self.s_to_client.len() {
            if index >= self.max_ids {
                return Err(TranslateError::Exhausted(self.max_ids));
            }
            self.s_to_client.resize(index + 1, 0);
        }
        let client = self.allocate_server_range()?;
        self.s_to_server[client as usize] = raw;
        let client = client + SERVER_ID_START;
        self.s_to_client[index] = client;
        ObjectId::new(client).ok_or(TranslateError::Unmapped(id))
    }

    /// Gives the relay's own server-side object `server` (a client-range id it allocated with
    /// [`Self::new_private`]) to the client, under a new server-range id.
    pub fn new_server_object(&mut self, server: ObjectId) -> Result<ObjectId, TranslateError> {
        let raw = server.get();
        let at = self.private.iter().position(|(s, _, _)| *s == raw);
        let Some(at) = at else {
            return Err(TranslateError::NotAllocated(raw));
        };
        let client = self.allocate_server_range()?;
        self.s_to_server[client as usize] = raw;
        let client = client + SERVER_ID_START;
        self.private.swap_remove(at);
        self.to_client[raw as usize] = client;
        ObjectId::new(client).ok_or(TranslateError::NotAllocated(raw))
    }

    /// The client's server-range object `id` was destroyed (by its destructor request or
    /// event): its id is free. A server-range server-side id is the server's to free; a
    /// client-range one (the relay's, see [`Self::new_server_object`]) becomes private
    /// (`interface`, `version`) until the server's `delete_id`.
    pub fn server_object_destroyed(
        &mut self,
        id: ObjectId,
        interface: &'static Interface,
        version: u32,
    ) {
        let raw = id.get();
        if raw < SERVER_ID_START {
            return;
        }
        let index = (raw - SERVER_ID_START) as usize;
        let Some(server) = self.s_to_server.get_mut(index) else {
            return;
        };
        let server = std::mem::take(server);
        if server == 0 {
            return;
        }
        self.s_free.push(index as u32);
        if server >= SERVER_ID_START {
            if let Some(c) = self
                .s_to_client
                .get_mut((server - SERVER_ID_START) as usize)
            {
                *c = 0;
            }
        } else if let Some(c) = self.to_client.get_mut(server as usize) {
            *c = PRIVATE;
            self.private.push((server, interface, version));
        }
    }

    /// The server released its id `raw` (`wl_display.delete_id`): frees it, and returns the
    /// client id to release with it (`None` for the relay's own objects).
    pub fn server_deleted(&mut self, raw: u32) -> Result<Option<ObjectId>, TranslateError> {
        let index = raw as usize;
        let client = match self.to_client.get(index) {
            _ if raw == 0 || raw == 1 || raw >= SERVER_ID_START => {
                return Err(TranslateError::NotAllocated(raw));
            }
            None | Some(0) => return Err(TranslateError::NotAllocated(raw)),
            Some(&PRIVATE) => {
                self.private.retain(|(s, _, _)| *s != raw);
                None
            }
            // A server-range client id was freed with its object.
            Some(&c) if c >= SERVER_ID_START => None,
            Some(&c) => {
                if let Some(s) = self.to_server.get_mut(c as usize) {
                    *s = 0;
                }
                ObjectId::new(c)
            }
        };
        self.to_client[index] = 0;
        self.free.push(raw);
        Ok(client)
    }
}

/// Rewrites, in the encoded message `bytes`, its sender and each object and new-id argument of
/// `args` (its decoded arguments, in order) with `map`. Returns what `map` fails with.
pub fn rewrite_ids<E>(
    bytes: &mut [u8],
    sender: ObjectId,
    args: &[Arg<'_>],
    mut map: impl FnMut(&Arg<'_>, ObjectId) -> Result<u32, E>,
) -> Result<(), E> {
    put(bytes, 0, sender.get());
    let mut pos = HEADER_SIZE;
    for arg in args {
        match arg {
            Arg::Object(Some(id)) | Arg::NewId(id) => {
                let v = map(arg, *id)?;
                put(bytes, pos, v);
            }
            _ => {}
        }
        pos += arg.wire_len();
    }
    Ok(())
}

fn put(bytes: &mut [u8], at: usize, v: u32) {
    if let Some(w) = bytes.get_mut(at..at + 4) {
        w.copy_from_slice(&v.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tables::ProtocolTable;
    use crate::wire;

    fn id(n: u32) -> ObjectId {
        ObjectId::new(n).unwrap()
    }

    fn pool() -> &'static Interface {
        ProtocolTable::builtin().get("wl_shm_pool").unwrap()
    }

    #[test]
    fn a_well_behaved_client_keeps_its_ids() {
        let mut t = IdTranslation::new(100, 4);
        for n in 2..10 {
            assert_eq!(t.bind_new(id(n)).unwrap(), id(n));
        }
        assert_eq!(t.to_server(id(1)), Some(id(1)));
        assert_eq!(t.to_client(id(5)), ServerSide::Client(id(5)));
        assert_eq!(t.to_client(id(10)), ServerSide::Unknown);
        // The server's new objects get the client's server-range ids in the same order.
        for n in 0..3 {
            let s = id(0xff00_0000 + n);
            assert_eq!(t.bind_server_new(s).unwrap(), s);
            assert_eq!(t.to_server(s), Some(s));
            assert_eq!(t.to_client(s), ServerSide::Client(s));
        }
        assert_eq!(t.to_client(id(0xff00_0003)), ServerSide::Unknown);
    }

    #[test]
    fn private_objects_shift_the_server_ids_and_stay_invisible() {
        let mut t = IdTranslation::new(100, 4);
        t.bind_new(id(2)).unwrap();
        let p = t.new_private(pool(), 1).unwrap();
        assert_eq!(p, id(3));
        assert_eq!(t.bind_new(id(3)).unwrap(), id(4));
        assert_eq!(t.to_client(id(3)), ServerSide::Private(pool(), 1));
        assert_eq!(t.to_client(id(4)), ServerSide::Client(id(3)));
        // The server deletes the private object: nothing for the client.
        assert_eq!(t.server_deleted(3).unwrap(), None);
        // And its id is reused next.
        assert_eq!(t.bind_new(id(4)).unwrap(), id(3));
        assert_eq!(t.to_client(id(3)), ServerSide::Client(id(4)));
    }

    #[test]
    fn rebind_moves_the_client_id_and_the_old_object_becomes_private() {
        let mut t = IdTranslation::new(100, 4);
        t.bind_new(id(2)).unwrap();
        let new = t.new_private(pool(), 1).unwrap();
        t.rebind(id(2), new, pool(), 1).unwrap();
        assert_eq!(t.to_server(id(2)), Some(new));
        assert_eq!(t.to_client(new), ServerSide::Client(id(2)));
        assert_eq!(t.to_client(id(2)), ServerSide::Private(pool(), 1));
        assert_eq!(t.server_deleted(2).unwrap(), None);
        assert_eq!(t.server_deleted(new.get()).unwrap(), Some(id(2)));
        assert_eq!(t.to_server(id(2)), None);
        assert_eq!(t.private_objects(), 0);
    }

    #[test]
    fn detach_keeps_the_object_for_the_relay() {
        let mut t = IdTranslation::new(100, 4);
        t.bind_new(id(2)).unwrap();
        let s = t.detach(id(2), pool(), 1).unwrap();
        assert_eq!(t.to_server(id(2)), None);
        assert_eq!(t.to_client(s), ServerSide::Private(pool(), 1));
        // The client may reuse its id at once: it gets another server-side id.
        assert_eq!(t.bind_new(id(2)).unwrap(), id(3));
    }

    #[test]
    fn server_range_ids_are_translated_and_freed_with_their_objects() {
        let mut t = IdTranslation::new(100, 4);
        let buffer = ProtocolTable::builtin().get("wl_buffer").unwrap();
        let s0 = id(0xff00_0000);
        let s1 = id(0xff00_0001);
        assert_eq!(t.bind_server_new(s0).unwrap(), s0);
        // The relay's own buffer (client-range on the server) goes to the client as s1.
        let mine = t.new_private(buffer, 1).unwrap();
        assert_eq!(t.new_server_object(mine).unwrap(), s1);
        assert_eq!(t.to_server(s1), Some(mine));
        assert_eq!(t.to_client(mine), ServerSide::Client(s1));
        // The server's next object takes the client's next server-range id.
        assert_eq!(t.bind_server_new(s1).unwrap(), id(0xff00_0002));
        assert_eq!(t.bind_server_new(s1), Err(TranslateError::AlreadyBound(s1)));
        // Destroyed: s0 is free again on both sides; the relay's buffer waits for delete_id.
        t.server_object_destroyed(s0, buffer, 1);
        t.server_object_destroyed(s1, buffer, 1);
        assert_eq!(t.to_client(s0), ServerSide::Unknown);
        assert_eq!(t.to_client(mine), ServerSide::Private(buffer, 1));
        assert_eq!(t.server_deleted(mine.get()).unwrap(), None);
        assert_eq!(t.bind_server_new(s0).unwrap(), s1);
        assert_eq!(t.bind_server_new(id(0xff00_0005)).unwrap(), s0);
        assert_eq!(
            t.bind_server_new(id(7)),
            Err(TranslateError::ClientRange(id(7)))
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        let mut t = IdTranslation::new(4, 1);
        assert_eq!(
            t.bind_new(id(0xff00_0000)),
            Err(TranslateError::ServerRange(id(0xff00_0000)))
        );
        t.bind_new(id(2)).unwrap();
        assert_eq!(t.bind_new(id(2)), Err(TranslateError::AlreadyBound(id(2))));
        t.bind_new(id(3)).unwrap();
        assert_eq!(t.bind_new(id(4)), Err(TranslateError::Exhausted(4)));
        for raw in [0, 1, 9, 0xff00_0001] {
            assert_eq!(
                t.server_deleted(raw),
                Err(TranslateError::NotAllocated(raw))
            );
        }
        assert_eq!(t.server_deleted(2).unwrap(), Some(id(2)));
        assert_eq!(t.server_deleted(2), Err(TranslateError::NotAllocated(2)));
        t.new_private(pool(), 1).unwrap();
        assert_eq!(
            t.new_private(pool(), 1),
            Err(TranslateError::TooManyPrivate(1))
        );
    }

    #[test]
    fn rewrite_patches_sender_objects_and_new_ids_only() {
        let s = c"text";
        let args = [
            Arg::Uint(7),
            Arg::Str(Some(s)),
            Arg::Object(Some(id(5))),
            Arg::Fd,
            Arg::Object(None),
            Arg::NewId(id(6)),
        ];
        let mut bytes = Vec::new();
        wire::encode_unchecked(&mut bytes, id(3), 2, &args).unwrap();
        rewrite_ids(&mut bytes, id(30), &args, |_, o| {
            Ok::<u32, ()>(o.get() * 10)
        })
        .unwrap();
        let mut want = Vec::new();
        let new = [
            Arg::Uint(7),
            Arg::Str(Some(s)),
            Arg::Object(Some(id(50))),
            Arg::Fd,
            Arg::Object(None),
            Arg::NewId(id(60)),
        ];
        wire::encode_unchecked(&mut want, id(30), 2, &new).unwrap();
        assert_eq!(bytes, want);
    }
}
