"""What happens to an input after its job succeeded: keep it, delete it, or archive it.

A route's ``after_success`` (watcher/config.py) is ``"keep"`` (the default),
``"delete"`` or ``"archive"``: a server-side copy to ``<archive_prefix><route>/<rel>``,
then the delete. It runs only after the manifest is written (the runner, right
after its won commit; the tick again for a succeeded input still there, so a worker
that died in between is finished for), and it only ever touches the claimed
version: the copy is guarded by CopySourceIfMatch and the delete by
``Bucket.delete_if_match``, so a newer upload under the same key stays. Running it
twice is harmless: the second copy finds the input gone and the delete has
nothing left to do.

The manifest records the planned action (``input.after_success``), since it is
written before the action runs.
"""

from __future__ import annotations

from typing import Literal

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import JobRef
from handlers.jobs.retry import with_storage_retries
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError, ObjectNotFound, PreconditionFailed
from infra.text import one_line

log: FilteringBoundLogger = structlog.get_logger(__name__)

AfterSuccess = Literal["keep", "delete", "archive"]
Outcome = Literal["kept", "deleted", "archived", "already_gone", "replaced", "error"]


def archive_key(ref: JobRef, archive_prefix: str) -> str:
    """``<archive_prefix><route>/<rel>``: where ``archive`` moves the input."""
    return f"{archive_prefix}{ref.route}/{ref.rel}"


def manifest_record(ref: JobRef, action: str, archive_prefix: str) -> dict[str, str] | None:
    """The manifest's ``input.after_success``; None for ``keep`` (manifests keep their shape)."""
    if action == "delete":
        return {"action": "delete"}
    if action == "archive":
        return {"action": "archive", "archive_key": archive_key(ref, archive_prefix)}
    return None


async def apply_after_success(
    bucket: Bucket, ref: JobRef, action: str, archive_prefix: str
) -> Outcome:
    """Carry out ``action`` on the claimed version of the input. Never raises for storage.

    ``replaced``: a newer version is there now; it is left alone (and becomes its own job).
    """
    if action == "keep":
        return "kept"
    try:
        if action == "archive":
            dst = archive_key(ref, archive_prefix)
            try:
                await with_storage_retries(
                    lambda: bucket.copy(ref.input_key, dst, if_match=ref.etag)
                )
            except ObjectNotFound:
                log.info("after_success_input_already_gone", action=action)
                return "already_gone"
        deleted = await with_storage_retries(
            lambda: bucket.delete_if_match(ref.input_key, ref.etag)
        )
    except PreconditionFailed:
        log.info("after_success_input_replaced", action=action)
        return "replaced"
    except BucketError as exc:  # the tick tries again while the input is there
        log.warning("after_success_failed", action=action, error=one_line(exc))
        return "error"
    if not deleted:
        log.info("after_success_input_replaced", action=action)
        return "replaced"
    outcome: Outcome = "archived" if action == "archive" else "deleted"
    log.info("after_success_done", action=action, outcome=outcome)
    return outcome
