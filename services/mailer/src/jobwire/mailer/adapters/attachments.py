"""Attachments: files referenced by ``FileObject``, read through the kit's storage port.

The mailer reads only from the storages it is configured with
(``JOBWIRE_MAILER__STORAGES``), matched by kind and bucket or container: a
command cannot make it read an arbitrary bucket with its credentials.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobwire.contracts.mail import Attachment
from jobwire.contracts.objects import FileObject
from jobwire.contracts.storage import StorageConfig
from jobwire.mailer.domain.addresses import InvalidCommand
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.storage import Storage, StorageError, open_storage


class AttachmentStore:
    def __init__(self, configs: Sequence[StorageConfig], secrets: Secrets) -> None:
        self._configs = list(configs)
        self._secrets = secrets
        self._open: dict[int, Storage] = {}

    def _storage(self, file: FileObject, field: str) -> tuple[Storage, str]:
        """The storage holding ``file`` and its path there; InvalidCommand if none does."""
        for number, config in enumerate(self._configs):
            bucket = getattr(config, "bucket", None) or getattr(config, "container", None)
            if config.kind != file.storage.value or bucket != file.bucket:
                continue
            storage = self._open.get(number)
            if storage is None:
                storage = self._open[number] = open_storage(config, self._secrets)
            if not file.path.startswith(storage.prefix):
                continue
            return storage, file.path[len(storage.prefix) :]
        where = file.storage.value + (f" bucket {file.bucket!r}" if file.bucket else "")
        raise InvalidCommand(f"{field}.storage", f"the mailer is not configured to read {where}")

    async def check(
        self, attachments: Sequence[Attachment], max_bytes: int
    ) -> list[InvalidCommand]:
        """What is wrong with ``attachments``: unreadable storage, missing file, too large."""
        problems: list[InvalidCommand] = []
        for number, attachment in enumerate(attachments):
            field = f"attachments.{number}.file"
            try:
                storage, path = self._storage(attachment.file, field)
                stored = await storage.stat(path)
            except InvalidCommand as exc:
                problems.append(exc)
                continue
            except StorageError as exc:
                problems.append(InvalidCommand(f"{field}.path", f"cannot be read: {exc}"))
                continue
            if stored is None:
                problems.append(
                    InvalidCommand(f"{field}.path", f"{attachment.file.path!r} does not exist")
                )
            elif stored.size > max_bytes:
                problems.append(
                    InvalidCommand(
                        f"{field}.size",
                        f"{stored.size} bytes; attachments may have at most {max_bytes}",
                    )
                )
        return problems

    async def read(self, attachment: Attachment, number: int, max_bytes: int) -> bytes:
        """The attachment's bytes; InvalidCommand if it is gone, unreadable or too large now."""
        field = f"attachments.{number}.file"
        storage, path = self._storage(attachment.file, field)
        try:
            data = await storage.read(path)
        except StorageError as exc:
            raise InvalidCommand(f"{field}.path", f"cannot be read: {exc}") from None
        if len(data) > max_bytes:
            raise InvalidCommand(
                f"{field}.size", f"{len(data)} bytes; attachments may have at most {max_bytes}"
            )
        return data

    async def close(self) -> None:
        for storage in self._open.values():
            await storage.close()
        self._open.clear()
