"""The built-in e-commerce demo roles and the lookup of user roles by import path.

Traffic is uneven on purpose, so the SlimeMold topology has something to adapt to:
Sales opens orders and asks Inventory (check_stock) and Fraud (risk_assessment), who
answer back; Support handles tickets (they arrive in its own inbox, one conversation per
ticket, up to 8 at once: an async handler) and asks Sales for the customer's recent
orders, and passes an upsell lead to Sales now and then; the other pairs never talk.
With the default rates the graph settles at those 6 edges. Each order and each ticket is
a conversation (`meta.conversation`), kept in order wherever it goes.

Bee consensus: Sales proposes a discount for every order from `discount_threshold`;
Support proposes refunds. Fraud opposes large discounts, refunds and risky content;
Inventory opposes discounts on orders it cannot fill from its stock; Sales opposes large
refunds. Everyone else votes by the waggle intensity, so decisions go both ways.
Rates come from mesh.yaml `workload`.

Services: every agent keeps what it handles as the customer's history in Memory, as a
conversation keyed by the order or ticket id; Support awaits Cognition's context for the
customer before it answers a ticket. When a service is down the roles go on without it.
Inventory and Fraud answer `agentmesh ask` too (`ctx.respond`: a reply to a request, a
message otherwise).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agentmesh_cli.agent.base import Role, Vote, type_of_request
from agentmesh_cli.agent.demo_payloads import CheckStock, RecentOrders, RiskAssessment, Ticket
from agentmesh_cli.consensus.core import Proposal
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AskError

CATALOGUE = {"keyboard": 40, "monitor": 180, "laptop": 1200, "cable": 8, "chair": 150}
RESTOCK_EVERY_S = 30.0
RESTOCK_UNITS = 5
SALES_REFUND_LIMIT = 1000.0  # Sales opposes refunds above this
FRAUD_REFUND_LIMIT = 500.0  # Fraud opposes refunds above this
FRAUD_DISCOUNT_LIMIT = 2500.0  # Fraud opposes discounts on orders above this
CUSTOMERS = 20  # the demo's customers: customer-1 .. customer-20
RECENT_ORDERS = 5  # orders per customer Sales keeps for Support's questions
ASK_SALES_S = 5.0  # how long Support waits for Sales's answer about a customer


def pick_customer(rng: random.Random) -> str:
    return f"customer-{rng.randint(1, CUSTOMERS)}"


def describe(items: dict[str, int]) -> str:
    return ", ".join(f"{qty} {name}" for name, qty in sorted(items.items()))


def next_gap(rate: float, uniform: float) -> float:
    """Seconds to the next event of a Poisson flow at `rate`/s (inf when switched off)."""
    if rate <= 0:
        return math.inf
    return -math.log(1.0 - uniform) / rate


@dataclass
class Order:
    order_id: str
    items: dict[str, int]
    amount: float
    customer: str = ""
    answers: dict[str, bool] = field(default_factory=dict)


class SalesRole(Role):
    """Opens orders, asks Inventory and Fraud, confirms when both approve; takes leads."""

    accepts = {"recent_orders": RecentOrders}

    def on_start(self) -> None:
        self.open_orders: dict[str, Order] = {}
        self.count = 0
        self.confirmed = 0
        self.declined = 0
        self.leads = 0
        self.next_order_at = 0.0
        self.recent: dict[str, deque[dict[str, Any]]] = {}  # customer -> newest orders

    def on_tick(self, now: float) -> None:
        rate = self.ctx.config.workload.order_rate
        if now < self.next_order_at or rate <= 0 or self.ctx.draining:
            return  # `agentmesh down` is draining the mesh: no new orders
        self.next_order_at = now + next_gap(rate, self.ctx.rng.random())
        inventory, fraud = self.ctx.peers("inventory"), self.ctx.peers("fraud")
        if not inventory or not fraud:
            return  # nobody to ask yet; orders start once the team is present
        self.count += 1
        items = {
            name: self.ctx.rng.randint(1, 3)
            for name in self.ctx.rng.sample(sorted(CATALOGUE), self.ctx.rng.randint(1, 3))
        }
        amount = float(sum(CATALOGUE[name] * qty for name, qty in items.items()))
        customer = pick_customer(self.ctx.rng)
        order = Order(f"{self.ctx.name}-{self.count}", items, amount, customer)
        self.open_orders[order.order_id] = order
        self.recent.setdefault(customer, deque(maxlen=RECENT_ORDERS)).append(
            {"order_id": order.order_id, "items": items, "amount": amount, "status": "open"})
        body = {"order_id": order.order_id, "customer": customer, "items": items, "amount": amount}
        self.ctx.remember(customer, f"order {order.order_id}: {describe(items)} for {amount:.0f}",
                          order.order_id, {"kind": "order", "amount": amount})
        conversation = {"conversation": order.order_id}  # the order's messages, in order
        self.ctx.send(self.ctx.rng.choice(inventory), "check_stock", body, conversation)
        self.ctx.send(self.ctx.rng.choice(fraud), "risk_assessment", body, conversation)
        if amount >= self.ctx.config.workload.discount_threshold:
            # a large order earns a discount, if the team agrees
            self.ctx.propose("decision", {"type": "approval", "kind": "discount", **body,
                                          "discount": 0.1, "priority": "medium"})

    def evaluate(self, proposal: Proposal) -> Vote | None:
        if proposal.content.get("kind") == "refund" and _amount(proposal) > SALES_REFUND_LIMIT:
            return Vote(False, self.confidence)  # large refunds hurt revenue
        return super().evaluate(proposal)

    def on_decision(self, proposal: Proposal) -> None:
        if proposal.proposer_id == self.ctx.name:
            self.ctx.log.info("discount for %s %s", proposal.content.get("order_id"),
                              proposal.status.value)

    def on_message(self, message: Envelope) -> None:
        if message.type == "recent_orders":  # Support asks about a customer
            asked = str(message.payload.get("customer"))
            self.ctx.respond(message, "recent_orders", {"customer": asked,
                                                        "orders": list(self.recent.get(asked, ()))})
            return
        if message.type == "upsell_lead":
            self.leads += 1  # followed up with the customer directly, not with Support
            lead, product = message.payload.get("lead_id"), message.payload.get("product")
            self.ctx.log.info("lead %s: offer %s", lead, product)
            customer, ticket = message.payload.get("customer"), message.payload.get("ticket")
            if isinstance(customer, str) and isinstance(ticket, str):
                self.ctx.remember(customer, f"sales offered the {product} (lead {lead})", ticket,
                                  {"kind": "lead"})
            return
        if message.type not in ("stock_result", "risk_result"):
            return
        order = self.open_orders.get(str(message.payload.get("order_id")))
        if order is None:
            return
        order.answers[message.type] = bool(message.payload.get("approved"))
        if len(order.answers) == 2:
            del self.open_orders[order.order_id]
            for kept in self.recent.get(order.customer, ()):
                if kept["order_id"] == order.order_id:
                    kept["status"] = "confirmed" if all(order.answers.values()) else "declined"
            if all(order.answers.values()):
                self.confirmed += 1
                outcome = "confirmed"
                self.ctx.log.info("order %s confirmed (%.0f)", order.order_id, order.amount)
            else:
                self.declined += 1
                outcome = "declined"
                self.ctx.log.info("order %s declined: %s", order.order_id, order.answers)
            self.ctx.remember(order.customer, f"order {order.order_id} {outcome}", order.order_id,
                              {"kind": "order_" + outcome})


class InventoryRole(Role):
    """Tracks stock; reserves what an order needs when it can, restocks slowly; opposes
    discounts on orders it cannot fill."""

    accepts = {"check_stock": CheckStock}

    def on_start(self) -> None:
        self.stock = {name: 20 for name in CATALOGUE}
        self.next_restock = 0.0

    def on_tick(self, now: float) -> None:
        if now >= self.next_restock:
            self.next_restock = now + RESTOCK_EVERY_S
            for name in self.stock:
                self.stock[name] += RESTOCK_UNITS

    def can_fill(self, items: object) -> bool:
        return isinstance(items, dict) and all(
            self.stock.get(str(name), 0) >= int(qty) for name, qty in items.items()
        )

    def evaluate(self, proposal: Proposal) -> Vote | None:
        if "items" in proposal.content and not self.can_fill(proposal.content["items"]):
            return Vote(False, self.confidence)
        return super().evaluate(proposal)

    def on_message(self, message: Envelope) -> None:
        if message.type != "check_stock":
            return
        items = message.payload.get("items") or {}
        approved = self.can_fill(items)
        if approved:
            for name, qty in items.items():
                self.stock[str(name)] -= int(qty)
        order_id = message.payload.get("order_id")
        reply = {"order_id": order_id, "approved": approved}
        self.ctx.respond(message, "stock_result", reply)
        customer = message.payload.get("customer")
        if isinstance(customer, str) and isinstance(order_id, str):
            note = "reserved" if approved else "out of stock for"
            self.ctx.remember(customer, f"stock check: {note} {describe(items)}", order_id,
                              {"kind": "stock_check", "approved": approved})


class FraudRole(Role):
    """Scores orders by amount; refuses the risky ones; opposes large discounts and refunds."""

    accepts = {"risk_assessment": RiskAssessment}

    RISK_LIMIT = 0.8
    confidence = 0.9

    def evaluate(self, proposal: Proposal) -> Vote | None:
        amount, kind = _amount(proposal), proposal.content.get("kind")
        risk = proposal.content.get("risk")
        if (kind == "discount" and amount > FRAUD_DISCOUNT_LIMIT) or (
            kind == "refund" and amount > FRAUD_REFUND_LIMIT
        ) or (isinstance(risk, int | float) and risk >= self.RISK_LIMIT):
            return Vote(False, self.confidence)
        return super().evaluate(proposal)

    def on_message(self, message: Envelope) -> None:
        if message.type != "risk_assessment":
            return
        amount = float(message.payload.get("amount") or 0.0)
        risk = round(min(1.0, math.log10(amount + 1) / 5), 3)
        order_id = message.payload.get("order_id")
        approved = risk < self.RISK_LIMIT
        reply = {"order_id": order_id, "risk": risk, "approved": approved}
        self.ctx.respond(message, "risk_result", reply)
        customer = message.payload.get("customer")
        if isinstance(customer, str) and isinstance(order_id, str):
            verdict = "cleared" if approved else "refused as risky"
            self.ctx.remember(customer, f"risk assessment {risk}: payment {verdict}", order_id,
                              {"kind": "risk_assessment", "risk": risk})


class SupportRole(Role):
    """Handles tickets: now and then a customer asks a question (an upsell chance, passed
    to Sales as a lead) or complains (Support proposes a refund). A ticket arrives in
    Support's own inbox as its own conversation; the async handler awaits Cognition's
    context for the customer and asks Sales for their recent orders, then answers. With
    `concurrency: 8` in mesh.yaml, eight tickets are handled at once.

    Through the front door (the gateway, `agentmesh ask Support ticket ...`) a ticket is a
    request of its user: Support's ask to Sales is public, so the user sees it and Sales's
    answer as events of the conversation, with a few streamed `delta` words before the
    reply."""

    accepts = {"ticket": Ticket}
    replicable = True  # its counts are only for its log; what it knows is in Memory

    def on_start(self) -> None:
        self.count = 0
        self.refunds = 0
        self.tickets = 0
        self.with_context = 0
        self.with_orders = 0
        self.next_lead_at = 0.0
        self.next_refund_at = 0.0

    def on_tick(self, now: float) -> None:
        if self.ctx.draining:
            return  # `agentmesh down` is draining the mesh: no new tickets
        self._maybe_refund(now)
        self._maybe_lead(now)

    def _replicas(self) -> int:
        """The replicas mesh.yaml declares for this Support's group (1 alone): the demo's
        rates are the group's, shared by its replicas."""
        spec = self.ctx.config.spec_of(self.ctx.name)
        return spec.declared_replicas if spec is not None else 1

    def _maybe_refund(self, now: float) -> None:
        rate = self.ctx.config.workload.refund_rate / self._replicas()
        if now < self.next_refund_at or rate <= 0:
            return
        first = self.next_refund_at == 0.0
        self.next_refund_at = now + next_gap(rate, self.ctx.rng.random())
        if first:
            return
        self.refunds += 1
        amount = float(self.ctx.rng.choice((25, 80, 180, 400, 750, 1200, 2400)))
        product = self.ctx.rng.choice(sorted(CATALOGUE))
        self._open_ticket(f"{self.ctx.name}-r{self.refunds}", {
            "kind": "complaint", "product": product, "amount": amount,
            "text": f"complaint: the {product} arrived damaged, refund {amount:.0f} asked"})

    def _maybe_lead(self, now: float) -> None:
        rate = self.ctx.config.workload.lead_rate / self._replicas()
        if now < self.next_lead_at or rate <= 0:
            return
        first = self.next_lead_at == 0.0
        self.next_lead_at = now + next_gap(rate, self.ctx.rng.random())
        if first or not self.ctx.peers("sales"):
            return
        self.count += 1
        product = self.ctx.rng.choice(sorted(CATALOGUE))
        self._open_ticket(f"{self.ctx.name}-t{self.count}", {  # unique across replicas
            "kind": "question", "product": product, "lead_id": f"{self.ctx.name}-l{self.count}",
            "text": f"question: does the {product} come in other sizes"})

    def _open_ticket(self, ticket: str, body: dict[str, Any]) -> None:
        """A customer's ticket arrives: in Support's inbox, as its own conversation."""
        body = {**body, "ticket": ticket, "customer": pick_customer(self.ctx.rng)}
        self.ctx.send(self.ctx.name, "ticket", body, {"conversation": ticket})

    async def on_message(self, message: Envelope) -> None:
        if message.type != "ticket":
            return
        p = message.payload
        customer = self.ctx.user or str(p.get("customer"))  # a user's own ticket: its token's user
        ticket = str(p.get("ticket") or self.ctx.conversation)
        text = str(p.get("text"))
        asked = type_of_request(message)  # from the front door: the user waits for the answer
        self.tickets += 1
        if asked:
            self.ctx.delta(f"Thanks {customer}, ")
        context = await self.ctx.acontext(customer, query=text, limit=5)  # Cognition, awaited
        if context:
            self.with_context += 1
        if asked:
            self.ctx.delta("looking at your recent orders... ")
        orders = await self._recent_orders(customer, public=asked)
        self.ctx.log.info("ticket %s from %s: %s (%s, %s)", ticket, customer, text,
                          "no context" if context is None else f"{len(context)} items of context",
                          "orders unknown" if orders is None else f"{len(orders)} recent orders")
        self.ctx.remember(customer, text, ticket, {"kind": "ticket"})
        if p.get("kind") == "question":
            sales = self.ctx.peers("sales")
            if sales:
                lead = {"lead_id": p.get("lead_id"), "ticket": ticket, "product": p.get("product"),
                        "customer": customer}
                self.ctx.send(self.ctx.rng.choice(sales), "upsell_lead", lead)
        elif p.get("kind") == "complaint":
            amount = float(p.get("amount") or 0)
            self.ctx.propose("action", {"type": "action", "kind": "refund", "ticket": ticket,
                                        "customer": customer, "amount": amount, "urgent": amount < 100})
        if asked:
            self.ctx.reply(message, "ticket_answer", {
                "ticket": ticket, "customer": customer,
                "answer": ("a refund was proposed" if p.get("kind") == "complaint"
                           else "Sales will get back to you about it"),
                "recent_orders": len(orders) if orders is not None else None,
                "context_items": len(context) if context else 0})

    async def _recent_orders(self, customer: str, public: bool = False) -> list[Any] | None:
        """Sales keeps each customer's newest orders: ask (None when nobody answers)."""
        sales = self.ctx.peers("sales")
        if not sales:
            return None
        try:
            reply = await self.ctx.ask(sales[0], "recent_orders", {"customer": customer},
                                       timeout=ASK_SALES_S, public=public)
        except AskError as exc:
            self.ctx.log.warning("no recent orders of %s: %s", customer, exc)
            return None
        orders = reply.payload.get("orders")
        if isinstance(orders, list):
            self.with_orders += 1
            return orders
        return None

    def on_decision(self, proposal: Proposal) -> None:
        if proposal.proposer_id == self.ctx.name:
            ticket, customer = proposal.content.get("ticket"), proposal.content.get("customer")
            amount, outcome = proposal.content.get("amount"), proposal.status.value
            self.ctx.log.info("refund %s of %s: %s", ticket, amount, outcome)
            if isinstance(customer, str) and isinstance(ticket, str):
                self.ctx.remember(customer, f"refund of {amount} {outcome}", ticket,
                                  {"kind": "refund", "status": outcome})


def _amount(proposal: Proposal) -> float:
    amount = proposal.content.get("amount")
    return float(amount) if isinstance(amount, int | float) and not isinstance(amount, bool) else 0.0
