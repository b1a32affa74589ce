"""sipedge's sans-I/O SIP core: parsing, serialisation, transactions, digest auth."""

from sip._compiled import activate

activate(__name__, __path__)
