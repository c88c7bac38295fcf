// A MatrixRTC call member made of matrix-js-sdk (npm) with its Rust crypto, joining the room's
// call exactly as Element Call does (`joinRTCSession` with a random member id, multi-SFU
// LiveKit transport, `manageMediaKeys: true` → RTCEncryptionManager + ToDeviceKeyTransport).
// No media: it reports the media keys js-sdk hands to the media layer. Used by
// tests/matrix_e2ee_js.rs.
//
// Config (env MI_JSRTC_CONFIG, JSON; passwords never printed):
//   {"homeserver": "http://127.0.0.1:8008", "room_id": "!r:localhost",
//    "livekit_service_url": "http://127.0.0.1:8090",
//    "members": [{"name": "alice", "user_id": "@alice:localhost", "password": "…"}, …]}
//   A member with "access_token" and "device_id" instead of "password" uses that existing
//   session (a device without crypto keys yet), so its LiveKit identity can be shared with a
//   media peer that got its token for the same device.
// stdin, one JSON per line: {"cmd": "join", "who": "alice"} | {"cmd": "leave", "who": "bob"}
//   | {"cmd": "device_status", "who": "alice", "user_id": "@u:s", "device_id": "D"}
// stdout, one JSON per line (everything else goes to stderr):
//   {"event": "ready", "who", "user_id", "device_id"}
//   {"event": "joined" | "left", "who"}
//   {"event": "members", "who", "members": ["@u:s:DEVICE", …]}
//   {"event": "key", "who", "user_id", "device_id", "identity", "index", "key": base64}
//   {"event": "device_status", "who", "user_id", "device_id", "signed_by_owner": bool}
//   {"event": "error", "message"}
// Exits when stdin closes (leaving the call first).

import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";

// js-sdk and its crypto log through console.*: keep stdout for the protocol.
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.log = console.info = console.debug = console.warn = console.trace = toStderr;

// js-sdk 43 asks for node >= 22; these are the two newer globals it uses that node 20 (and
// Debian's 18) lack.
globalThis.crypto ??= (await import("node:crypto")).webcrypto;
Promise.withResolvers ??= function () {
    let resolve, reject;
    const promise = new this((res, rej) => {
        resolve = res;
        reject = rej;
    });
    return { promise, resolve, reject };
};

const sdk = await import("matrix-js-sdk");
const { MatrixRTCSessionEvent } = await import("matrix-js-sdk/lib/matrixrtc/index.js");

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (message) => {
    emit({ event: "error", message });
    process.exit(1);
};
process.on("unhandledRejection", (e) => fail(`unhandled: ${e?.stack ?? e}`));

const config = JSON.parse(process.env.MI_JSRTC_CONFIG ?? "null") ?? fail("MI_JSRTC_CONFIG unset");
const b64 = (bytes) => Buffer.from(bytes).toString("base64");

async function logIn(member) {
    if (member.access_token) {
        return { user_id: member.user_id, device_id: member.device_id, access_token: member.access_token };
    }
    const localpart = member.user_id.slice(1).split(":")[0];
    const anon = sdk.createClient({ baseUrl: config.homeserver });
    return await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: localpart },
        password: member.password,
        initial_device_display_name: `jsrtc ${member.name}`,
    });
}

async function start(member) {
    const login = await logIn(member);
    const client = sdk.createClient({
        baseUrl: config.homeserver,
        userId: login.user_id,
        deviceId: login.device_id,
        accessToken: login.access_token,
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = new Promise((resolve) => {
        client.on(sdk.ClientEvent.Sync, (state) => {
            if (state === "PREPARED") resolve();
        });
    });
    await client.startClient({ initialSyncLimit: 0 });
    await prepared;
    const room = client.getRoom(config.room_id) ?? fail(`${member.name} is not in ${config.room_id}`);
    const session = client.matrixRTC.getRoomSession(room);
    session.on(MatrixRTCSessionEvent.EncryptionKeyChanged, (key, index, membership, identity) => {
        emit({
            event: "key",
            who: member.name,
            user_id: membership.userId,
            device_id: membership.deviceId,
            identity,
            index,
            key: b64(key),
        });
    });
    session.on(MatrixRTCSessionEvent.MembershipsChanged, (_old, now) => {
        emit({ event: "members", who: member.name, members: now.map((m) => m.rtcBackendIdentity) });
    });
    emit({ event: "ready", who: member.name, user_id: login.user_id, device_id: login.device_id });
    return { client, session, room, memberId: randomUUID() };
}

const peers = new Map();
for (const m of config.members) {
    peers.set(m.name, await start(m));
}

function join(name) {
    const p = peers.get(name) ?? fail(`unknown member ${name}`);
    // Element Call compatibility mode (LocalMember.ts enterRTCSession).
    const transport = {
        type: "livekit",
        livekit_service_url: config.livekit_service_url,
        livekit_alias: config.room_id,
    };
    p.session.joinRTCSession(
        { userId: p.client.getUserId(), deviceId: p.client.getDeviceId(), memberId: p.memberId },
        [],
        transport,
        { manageMediaKeys: true, callIntent: "audio" },
    );
    emit({ event: "joined", who: name });
}

async function leave(name) {
    const p = peers.get(name) ?? fail(`unknown member ${name}`);
    await p.session.leaveRoomSession(5000);
    emit({ event: "left", who: name });
}

// Whether `who` sees the device signed by its owner's cross-signing key (what Element shows as
// a verified session of that user).
async function deviceStatus(who, userId, deviceId) {
    const p = peers.get(who) ?? fail(`unknown member ${who}`);
    const crypto = p.client.getCrypto();
    await crypto.getUserDeviceInfo([userId], true);
    const status = await crypto.getDeviceVerificationStatus(userId, deviceId);
    emit({
        event: "device_status",
        who,
        user_id: userId,
        device_id: deviceId,
        signed_by_owner: status?.signedByOwner ?? false,
    });
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
    if (!line.trim()) continue;
    let cmd;
    try {
        cmd = JSON.parse(line);
    } catch {
        fail(`not JSON: ${line}`);
    }
    if (cmd.cmd === "join") join(cmd.who);
    else if (cmd.cmd === "leave") await leave(cmd.who);
    else if (cmd.cmd === "device_status") await deviceStatus(cmd.who, cmd.user_id, cmd.device_id);
    else fail(`unknown command ${line}`);
}
for (const [name, p] of peers) {
    if (p.session.isJoined()) await leave(name);
    p.client.stopClient();
}
process.exit(0);
