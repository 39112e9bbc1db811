"""What the demo roles accept (`Role.accepts`): their requests' payloads as pydantic models.
The gateway publishes them (GET /agents, MCP tools) and checks payloads against them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CheckStock(BaseModel):
    """Is there stock for these items?"""

    order_id: str | None = Field(None, description="The order the check is for.")
    items: dict[str, int] = Field(default_factory=dict, description="Product -> quantity.")


class RiskAssessment(BaseModel):
    """How risky is this order?"""

    order_id: str | None = None
    customer: str | None = None
    amount: float = Field(0.0, ge=0, description="The order's total.")


class RecentOrders(BaseModel):
    """A customer's newest orders."""

    customer: str


class Ticket(BaseModel):
    """A customer's support ticket: a question or a complaint. The customer is the user the
    request acts for (the gateway's token), else `customer`."""

    text: str = Field(description="What the customer writes.")
    kind: str = Field("question", pattern="^(question|complaint)$")
    product: str | None = None
    amount: float | None = Field(None, ge=0, description="A complaint's refund asked for.")
    customer: str | None = None
