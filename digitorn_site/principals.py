"""Who is calling, and what a caller may see: no Django, no app imports.

Every layer that decides ownership imports this module (services, selectors, the HTTP auth), so it
must stay dependency-free: the auth module depends on it, never the reverse.

"Admin sees everything" is decided one way: a caller is the admin when it holds the ``admin``
scope. The bootstrap key and every key with the ``admin`` scope act as :data:`ADMIN_PRINCIPAL`, so
services that compare owner names (sessions, approvals, background tasks) agree with the scope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCOPES = ("apps:read", "apps:deploy", "apps:run", "secrets:write", "admin")
ADMIN_SCOPE = "admin"
ADMIN_PRINCIPAL = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: sessions, approvals and tasks belong to ``name``."""

    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_id: int | None = None

    is_authenticated = True
    is_anonymous = False

    def has_scope(self, scope: str) -> bool:
        return ADMIN_SCOPE in self.scopes or scope in self.scopes


def principal_for(*, owner: str, scopes, key_id: int | None = None) -> Principal:
    """The principal a key acts as: an ``admin``-scoped key acts as the admin (sees everything)."""
    scopes = frozenset(scopes)
    name = ADMIN_PRINCIPAL if ADMIN_SCOPE in scopes else owner
    return Principal(name=name, scopes=scopes, key_id=key_id)


def is_admin(principal: Principal | str | None) -> bool:
    """True for the admin: a :class:`Principal` with the admin scope, or the admin's owner name."""
    if isinstance(principal, Principal):
        return ADMIN_SCOPE in principal.scopes
    return principal == ADMIN_PRINCIPAL


def may_see(principal: Principal | str | None, owner: str | None) -> bool:
    """Whether ``principal`` may see a row owned by ``owner`` (its own, or any when admin)."""
    name = principal.name if isinstance(principal, Principal) else principal
    return is_admin(principal) or (name is not None and name == owner)
