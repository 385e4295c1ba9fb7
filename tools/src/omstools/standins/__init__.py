"""Local stand-ins for the payment providers (CONTRACT §7): each speaks the endpoints of its
provider's API that the payments adapter uses, signs as the provider does with keys generated for
local runs, keeps a ledger that survives restarts, and plays the customer."""
