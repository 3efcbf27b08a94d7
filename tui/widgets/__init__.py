"""Widgets of the operator's console; each keeps its own default CSS."""
