"""Payment providers behind one small interface (``base.Adapter``): one adapter per provider, each
speaking that provider's own protocol, so the same code talks to the real provider or to its
local stand-in by configuration alone (base URL and keys)."""
