"""Microsoft Graph contacts as vCard 4.0 (RFC 6350): what the Graph store writes into an
address book vdir, one .vcf per contact.  A pure function, no I/O; written by hand rather
than with vobject, whose writer speaks vCard 3.0: the format is a few dozen lines of
escaping and folding, and this way every byte is ours to keep stable.

What maps to what (Graph's contact resource -> vCard):
  id -> UID (urn:uuid:, a name-based UUID of the id: stable, and a URI as vCard 4.0 wants);
  displayName -> FN (else the names, fileAs, company or first address); surname,
  givenName, middleName, title, generation -> N; nickName -> NICKNAME; emailAddresses ->
  EMAIL (the first PREF=1; TYPE from a "type" where Graph gives one); businessPhones,
  homePhones, mobilePhone -> TEL (TYPE=work / home / cell, with voice);
  businessAddress, homeAddress, otherAddress -> ADR (TYPE=work / home / none);
  companyName, department -> ORG; jobTitle -> TITLE; profession -> ROLE; birthday -> BDAY;
  personalNotes -> NOTE; categories -> CATEGORIES; businessHomePage -> URL;
  spouseName, children -> RELATED (VALUE=text); lastModifiedDateTime -> REV.
  Not kept: imAddresses (no URI scheme is known for them), yomi (phonetic) names,
  initials, officeLocation, manager, assistantName, the photo.

Output: CRLF line ends (vdir.py writes LF on disk), lines folded at 75 octets without
splitting a UTF-8 sequence, text escaped per RFC 6350 3.4; the same contact gives the same
bytes.  A contact that is not a JSON object or has no id is a ValueError; anything else
missing is left out.
"""

from __future__ import annotations

import uuid

from mailsync.stores.graph_text import parse_timestamp, plain, utc_timestamp

# Name-based UUIDs of Graph contact ids live in a namespace of their own.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://graph.microsoft.com/v1.0/contacts")
MAX_VALUES = 1000  # addresses or phones of one contact: more is a hostile server
ADDRESSES = (("businessAddress", "work"), ("homeAddress", "home"), ("otherAddress", None))
EMAIL_TYPES = {"work": "work", "personal": "home", "home": "home"}


def contact_to_vcf(contact: dict) -> bytes:
    """The vCard 4.0 of `contact`, a Graph contact resource."""
    if not isinstance(contact, dict):
        raise ValueError(f"a contact is a JSON object, not {type(contact).__name__}")
    ident = plain(contact.get("id"), 10_000)
    if not ident:
        raise ValueError("the contact has no id")
    lines = ["BEGIN:VCARD", "VERSION:4.0", "PRODID:-//mailsync//Microsoft Graph to vCard//EN"]
    lines.append("UID:urn:uuid:" + str(uuid.uuid5(UID_NAMESPACE, ident)))
    lines.append("FN:" + _escape(_full_name(contact)))
    name_parts = ("surname", "givenName", "middleName", "title", "generation")
    if any(_text(contact.get(part)) for part in name_parts):
        lines.append("N:" + ";".join(_escape(_text(contact.get(part))) for part in name_parts))
    if nickname := _text(contact.get("nickName")):
        lines.append("NICKNAME:" + _escape(nickname))
    preferred = True
    for email in _list(contact.get("emailAddresses")):
        address = _text(email.get("address")) if isinstance(email, dict) else ""
        if not address:
            continue
        params = ""
        kind = EMAIL_TYPES.get(str(email.get("type") or "").lower())
        if kind:
            params += f";TYPE={kind}"
        if preferred:
            params += ";PREF=1"
            preferred = False
        lines.append(f"EMAIL{params}:" + _escape(address))
    phones = [(number, "work,voice") for number in _list(contact.get("businessPhones"))]
    phones += [(number, "home,voice") for number in _list(contact.get("homePhones"))]
    phones.append((contact.get("mobilePhone"), "cell,voice"))
    for number, kind in phones:
        if text := _text(number):
            lines.append(f"TEL;TYPE={kind}:" + _escape(text))
    for field, address_type in ADDRESSES:
        postal = contact.get(field)
        if not isinstance(postal, dict):
            continue
        # a street may be several lines: they stay lines (escaped as \n)
        parts = [plain(postal.get("street"), 100_000).strip()]
        parts += [
            _text(postal.get(key)) for key in ("city", "state", "postalCode", "countryOrRegion")
        ]
        if any(parts):
            # ADR: post office box; extended address; street; locality; region; code; country
            params = f";TYPE={address_type}" if address_type else ""
            lines.append(f"ADR{params}:;;" + ";".join(_escape(part) for part in parts))
    organization = [_text(contact.get("companyName")), _text(contact.get("department"))]
    if any(organization):
        company, department = organization
        lines.append("ORG:" + _escape(company) + (";" + _escape(department) if department else ""))
    if title := _text(contact.get("jobTitle")):
        lines.append("TITLE:" + _escape(title))
    if role := _text(contact.get("profession")):
        lines.append("ROLE:" + _escape(role))
    if (birthday := _birthday(contact.get("birthday"))) is not None:
        lines.append("BDAY:" + birthday)
    if homepage := _text(contact.get("businessHomePage")):
        lines.append("URL;TYPE=work:" + _escape(homepage))
    if spouse := _text(contact.get("spouseName")):
        lines.append("RELATED;TYPE=spouse;VALUE=text:" + _escape(spouse))
    for child in _list(contact.get("children")):
        if name := _text(child):
            lines.append("RELATED;TYPE=child;VALUE=text:" + _escape(name))
    if note := plain(contact.get("personalNotes")).strip():
        lines.append("NOTE:" + _escape(note))
    categories = [c for c in (_text(c) for c in _list(contact.get("categories"))) if c]
    if categories:
        lines.append("CATEGORIES:" + ",".join(_escape(c) for c in categories))
    if (
        modified := utc_timestamp(contact.get("lastModifiedDateTime"), "lastModifiedDateTime")
    ) is not None:
        lines.append("REV:" + modified.strftime("%Y%m%dT%H%M%SZ"))
    lines.append("END:VCARD")
    return b"".join(_fold(line) for line in lines)


def _list(value: object) -> list:
    return value[:MAX_VALUES] if isinstance(value, list) else []


def _text(value: object) -> str:
    """A one-line text value: cleaned, its line breaks made spaces, trimmed."""
    return " ".join(plain(value, 100_000).split())


def _full_name(contact: dict) -> str:
    for field in ("displayName", "fileAs"):
        if name := _text(contact.get(field)):
            return name
    names = " ".join(
        _text(contact.get(part))
        for part in ("title", "givenName", "middleName", "surname", "generation")
    ).split()
    if names:
        return " ".join(names)
    if company := _text(contact.get("companyName")):
        return company
    for email in _list(contact.get("emailAddresses")):
        if isinstance(email, dict) and (address := _text(email.get("address"))):
            return address
    return ""  # FN is required; an empty one is a valid value


def _birthday(value: object) -> str | None:
    """Graph's birthday (an Edm.DateTimeOffset, midnight or noon UTC of the day) as a
    vCard date; None when missing or no date."""
    if value is None:
        return None
    try:
        when, _ = parse_timestamp(value, "birthday")
    except ValueError:
        return None  # a contact is worth keeping without its birthday
    return when.strftime("%Y%m%d") if when.year >= 1 else None


def _escape(text: str) -> str:
    """A text value or component escaped per RFC 6350 3.4: backslash, comma, semicolon
    and the line break (plain() has made every break LF)."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;").replace("\n", "\\n")


def _fold(line: str) -> bytes:
    """`line` as content lines of at most 75 octets each, CRLF-terminated, continuation
    lines starting with a space (RFC 6350 3.2), never splitting a UTF-8 sequence."""
    data = line.encode("utf-8")
    if len(data) <= 75:
        return data + b"\r\n"
    out = []
    start, width = 0, 75
    while start < len(data):
        end = min(start + width, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # a continuation byte
            end -= 1
        out.append(data[start:end])
        start, width = end, 74  # the leading space counts
    return b"\r\n ".join(out) + b"\r\n"
