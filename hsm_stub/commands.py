"""hsm_stub commands: one pure handler per command, ``(keystore, request) -> response``.

``execute`` is the server's single entry point. It decodes the payload, runs the handler and
maps failures to statuses: unknown command ``10``, undecodable payload ``15``, a key blob that
is not under the LMK (or a region without keys) ``20``, a cryptogram that does not verify
``01``, PB for a region never provisioned ``21``, PB or PU under a key that is not a
counter's ``22``. Anything else is a bug and propagates; the server answers ``68``.

Key usage is enforced here, from the kind bound into each terminal key's blob
(``keystore.terminal_label``), never from what the host says: TV and KC take a terminal key
of any kind (legacy kind-less blobs included), PB and PU only a counter's. No command creates issuer
keys; a region gets them only by provisioning (``python -m hsm_stub provision-region``).

All cryptography is ``cardcrypto.profile``; cryptograms are compared in constant time.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cardcrypto import profile
from hsm_stub.keystore import IssuerKeys, KeyBlobError, Keystore, KeystoreError, UnknownRegion
from hsmlink.protocol import (
    REQUEST_TYPES,
    AuditAnchorMacRequest,
    AuditAnchorMacResponse,
    BuildPersonalizationRequest,
    BuildPersonalizationResponse,
    Command,
    EchoRequest,
    EchoResponse,
    ErrorDetail,
    GenerateTerminalKeyRequest,
    GenerateTerminalKeyResponse,
    KeyCheckValueRequest,
    KeyCheckValueResponse,
    MalformedPayload,
    Payload,
    PinUnblockRequest,
    PinUnblockResponse,
    Status,
    TerminalKind,
    VerifyAuditAnchorRequest,
    VerifyAuditAnchorResponse,
    VerifyCardRequest,
    VerifyCardResponse,
    VerifyTerminalRequest,
    VerifyTerminalResponse,
    decode_payload,
    encode_payload,
)


class CommandFailed(Exception):
    """A handler's refusal with a protocol status and a fixed, non-sensitive reason."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reply:
    status: Status
    payload: bytes
    reason: str | None = None  # why a non-ok status, for the log
    # Key-management commands only (TK, PB): what the HSM's key-management log line says —
    # kind, region, check values; never a key, a blob or a cryptogram.
    facts: dict[str, str] | None = None


def echo(keystore: Keystore, request: EchoRequest) -> EchoResponse:
    return EchoResponse(data=request.data)


def generate_terminal_key(
    keystore: Keystore, request: GenerateTerminalKeyRequest
) -> GenerateTerminalKeyResponse:
    clear_key = os.urandom(profile.KEY_LEN)
    return GenerateTerminalKeyResponse(
        clear_key=clear_key,
        key_under_lmk=keystore.wrap_terminal(request.kind, clear_key),
        kcv=profile.key_check_value(clear_key),
    )


def verify_terminal(keystore: Keystore, request: VerifyTerminalRequest) -> VerifyTerminalResponse:
    k_term = keystore.unwrap_terminal(request.key_under_lmk).key
    expected = profile.terminal_cryptogram(k_term, request.rs, request.rt)
    if not hmac.compare_digest(expected, request.cryptogram):
        raise CommandFailed(Status.VERIFICATION_FAILED, "terminal cryptogram mismatch")
    return VerifyTerminalResponse(
        server_cryptogram=profile.server_cryptogram(k_term, request.rs, request.rt),
        session_key=profile.derive_session_key(k_term, request.rs, request.rt),
    )


def _counter_key(keystore: Keystore, key_under_lmk: bytes) -> bytes:
    terminal_key = keystore.unwrap_terminal(key_under_lmk)
    if terminal_key.kind is not TerminalKind.COUNTER:
        # A legacy kind-less blob too: the HSM cannot tell it is a counter's (re-key it).
        raise CommandFailed(Status.KEY_USAGE, "not a counter terminal key")
    return terminal_key.key


def _issuer_keys(keystore: Keystore, admdvs: str) -> IssuerKeys:
    try:
        return keystore.issuer_keys(admdvs)
    except UnknownRegion:
        raise CommandFailed(Status.UNKNOWN_REGION, "region not provisioned") from None


def build_personalization(
    keystore: Keystore, request: BuildPersonalizationRequest
) -> BuildPersonalizationResponse:
    k_term = _counter_key(keystore, request.counter_key_under_lmk)
    issuer_keys = _issuer_keys(keystore, request.admdvs)
    k_auth = profile.diversify(issuer_keys.auth, request.card_sn)
    k_txn = profile.diversify(issuer_keys.txn, request.card_sn)
    return BuildPersonalizationResponse(
        blob=profile.seal_card_keys(k_term, request.card_sn, k_auth, k_txn),
        kcv_auth=profile.key_check_value(k_auth),
        kcv_txn=profile.key_check_value(k_txn),
    )


def verify_card(keystore: Keystore, request: VerifyCardRequest) -> VerifyCardResponse:
    # No key creation here: a region never personalised has no genuine cards.
    issuer_keys = keystore.issuer_keys(request.admdvs)
    master_key = issuer_keys.auth if request.key_ref == profile.KEY_REF_AUTH else issuer_keys.txn
    card_key = profile.diversify(master_key, request.card_sn)
    expected = profile.card_cryptogram(card_key, request.challenge)
    if not hmac.compare_digest(expected, request.cryptogram):
        raise CommandFailed(Status.VERIFICATION_FAILED, "card cryptogram mismatch")
    return VerifyCardResponse()


def pin_unblock(keystore: Keystore, request: PinUnblockRequest) -> PinUnblockResponse:
    """RESET RETRY COUNTER's MAC for a card present at a counter: the counter's key is only
    checked for its kind (the card's own keys authorise the command, not the terminal's)."""
    _counter_key(keystore, request.counter_key_under_lmk)
    k_txn = profile.diversify(_issuer_keys(keystore, request.admdvs).txn, request.card_sn)
    k_unblock = profile.pin_unblock_key(k_txn, request.card_sn)
    return PinUnblockResponse(mac=profile.pin_unblock_mac(k_unblock, request.card_challenge))


def key_check_value(keystore: Keystore, request: KeyCheckValueRequest) -> KeyCheckValueResponse:
    """KCV of a terminal key under the LMK (the only key type that leaves the HSM)."""
    k_term = keystore.unwrap_terminal(request.key_under_lmk).key
    return KeyCheckValueResponse(kcv=profile.key_check_value(k_term))


def audit_anchor_mac(keystore: Keystore, request: AuditAnchorMacRequest) -> AuditAnchorMacResponse:
    """SM4-CMAC of an audit anchor under the anchor key (generated at the first call)."""
    key = keystore.audit_anchor_key(create=True)
    return AuditAnchorMacResponse(mac=profile.sm4_cmac(key, request.message))


def verify_audit_anchor(
    keystore: Keystore, request: VerifyAuditAnchorRequest
) -> VerifyAuditAnchorResponse:
    """Whether ``mac`` is the anchor key's MAC of ``message``; the MAC never leaves."""
    expected = profile.sm4_cmac(keystore.audit_anchor_key(), request.message)
    if not hmac.compare_digest(expected, request.mac):
        raise CommandFailed(Status.VERIFICATION_FAILED, "audit anchor MAC mismatch")
    return VerifyAuditAnchorResponse()


HANDLERS: dict[Command, Callable[[Keystore, Any], Payload]] = {
    Command.ECHO: echo,
    Command.GENERATE_TERMINAL_KEY: generate_terminal_key,
    Command.VERIFY_TERMINAL: verify_terminal,
    Command.BUILD_PERSONALIZATION: build_personalization,
    Command.VERIFY_CARD: verify_card,
    Command.PIN_UNBLOCK: pin_unblock,
    Command.KEY_CHECK_VALUE: key_check_value,
    Command.AUDIT_ANCHOR_MAC: audit_anchor_mac,
    Command.VERIFY_AUDIT_ANCHOR: verify_audit_anchor,
}


def failure_reply(status: Status, reason: str) -> Reply:
    """A non-ok reply whose payload is an ``ErrorDetail``."""
    return Reply(status, encode_payload(ErrorDetail(reason=reason)), reason)


def execute(keystore: Keystore, command: str, payload: bytes) -> Reply:
    """Run one request; every expected failure becomes a status, never an exception."""
    if command not in HANDLERS:
        return failure_reply(Status.UNKNOWN_COMMAND, "unknown command")
    known = Command(command)
    try:
        request = decode_payload(payload, REQUEST_TYPES[known])
    except MalformedPayload as exc:
        return failure_reply(Status.MALFORMED_REQUEST, str(exc))
    try:
        response = HANDLERS[known](keystore, request)
    except KeystoreError as exc:
        reply = failure_reply(Status.KEY_ERROR, str(exc))
    except CommandFailed as exc:
        reply = failure_reply(exc.status, exc.reason)
    else:
        reply = Reply(Status.OK, encode_payload(response))
        return _with_facts(reply, key_management_facts(keystore, request, response))
    return _with_facts(reply, key_management_facts(keystore, request, None))


def _with_facts(reply: Reply, facts: dict[str, str] | None) -> Reply:
    if facts is None:
        return reply
    return Reply(reply.status, reply.payload, reply.reason, facts)


def key_management_facts(
    keystore: Keystore, request: Payload, response: Payload | None
) -> dict[str, str] | None:
    """The loggable facts of a TK or PB (``None`` for other commands); no key material."""
    if isinstance(request, GenerateTerminalKeyRequest):
        facts = {"kind": request.kind.value}
        if isinstance(response, GenerateTerminalKeyResponse):
            facts["kcv"] = response.kcv
        return facts
    if isinstance(request, BuildPersonalizationRequest):
        facts = {"region": request.admdvs, **_terminal_facts(keystore, request)}
        if isinstance(response, BuildPersonalizationResponse):
            facts |= {"kcv_auth": response.kcv_auth, "kcv_txn": response.kcv_txn}
        return facts
    return None


def _terminal_facts(keystore: Keystore, request: BuildPersonalizationRequest) -> dict[str, str]:
    try:
        terminal_key = keystore.unwrap_terminal(request.counter_key_under_lmk)
    except KeyBlobError:
        return {"kind": "(not a terminal key)"}
    kind = terminal_key.kind.value if terminal_key.kind else "(none: legacy blob)"
    return {"kind": kind, "kcv": profile.key_check_value(terminal_key.key)}
