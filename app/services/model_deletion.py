"""Deleting a model: its row goes, its scores and outcomes with it (foreign keys), and the
leaderboards those scores were on are rewritten. Above both ``models`` and ``leaderboards``,
so neither imports the other."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.services import leaderboards
from app.services import models as model_service
from app.tenancy import Principal


def delete(session: Session, model_id: str, principal: Principal) -> None:
    """Delete the model, if ``principal`` may (``models.deletable``), and rewrite the
    leaderboards it was on."""
    row = model_service.deletable(session, model_id, principal)
    boards = leaderboards.scored_by(session, row.id)
    session.delete(row)
    session.flush()
    leaderboards.rewrite(session, boards)
