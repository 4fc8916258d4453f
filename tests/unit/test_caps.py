"""XEP-0115 §5: the verification string, computed from disco#info answers (the two
examples of §5.2 and §5.3), and the §5.4 rules for ill-formed answers; XEP-0163 §4.2
interests (+notify) as PEP reads them."""

from __future__ import annotations

import base64
import hashlib

import pytest

from dovecote.modules.caps import HASHES, verification_string
from dovecote.modules.pep import interests
from dovecote.xml.parser import parse_element

DISCO = "http://jabber.org/protocol/disco#info"

SIMPLE = f"""<query xmlns='{DISCO}' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>
  <identity category='client' name='Exodus 0.9.1' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
</query>"""

COMPLEX = f"""<query xmlns='{DISCO}' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'>
      <value>urn:xmpp:dataforms:softwareinfo</value>
    </field>
    <field var='ip_version' type='text-multi'>
      <value>ipv4</value>
      <value>ipv6</value>
    </field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>"""


def query(text: str):  # type: ignore[no-untyped-def]
    return parse_element(text)


def sha1_b64(s: str) -> str:
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def test_simple_example_of_section_5_2() -> None:
    assert verification_string(query(SIMPLE), "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_complex_example_of_section_5_3() -> None:
    assert verification_string(query(COMPLEX), "sha-1") == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_order_of_elements_does_not_matter() -> None:
    reordered = f"""<query xmlns='{DISCO}'>
      <feature var='http://jabber.org/protocol/muc'/>
      <feature var='http://jabber.org/protocol/disco#items'/>
      <identity category='client' name='Exodus 0.9.1' type='pc'/>
      <feature var='http://jabber.org/protocol/disco#info'/>
      <feature var='http://jabber.org/protocol/caps'/>
    </query>"""
    assert verification_string(query(reordered), "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_other_hash_functions_hash_the_same_string() -> None:
    s = (
        "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<"
        "http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<"
        "http://jabber.org/protocol/muc<"
    )
    assert sha1_b64(s) == "QgayPKawpkPSDYmwT/WM94uAlu0="
    expected = base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
    assert verification_string(query(SIMPLE), "sha-256") == expected
    assert set(HASHES) >= {"sha-1", "sha-256", "sha-512"}


def test_unsupported_hash_gives_none() -> None:
    assert verification_string(query(SIMPLE), "md5") is None
    assert verification_string(query(SIMPLE), "rot13") is None


def test_plus_notify_features_change_the_hash() -> None:
    with_notify = SIMPLE.replace(
        "</query>", "<feature var='http://jabber.org/protocol/tune+notify'/></query>"
    )
    ver = verification_string(query(with_notify), "sha-1")
    assert ver is not None and ver != "QgayPKawpkPSDYmwT/WM94uAlu0="
    s = (
        "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<"
        "http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<"
        "http://jabber.org/protocol/muc<http://jabber.org/protocol/tune+notify<"
    )
    assert ver == sha1_b64(s)


@pytest.mark.parametrize(
    "extra",
    [
        # §5.4 3.3: the same identity twice
        "<identity category='client' name='Exodus 0.9.1' type='pc'/>",
        # §5.4 3.4: the same feature twice
        "<feature var='http://jabber.org/protocol/muc'/>",
        # XEP-0030: an identity needs a category and a type
        "<identity category='client'/>",
        # a feature needs a var
        "<feature/>",
    ],
)
def test_ill_formed_answers_are_refused(extra: str) -> None:
    broken = SIMPLE.replace("</query>", extra + "</query>")
    assert verification_string(query(broken), "sha-1") is None


def test_two_forms_with_one_form_type_are_ill_formed() -> None:
    form = COMPLEX[COMPLEX.index("<x ") : COMPLEX.index("</x>") + 4]
    broken = COMPLEX.replace("</query>", form + "</query>")
    assert verification_string(query(broken), "sha-1") is None


def test_form_type_with_differing_values_is_ill_formed() -> None:
    broken = COMPLEX.replace(
        "<value>urn:xmpp:dataforms:softwareinfo</value>",
        "<value>urn:xmpp:dataforms:softwareinfo</value><value>urn:other</value>",
    )
    assert verification_string(query(broken), "sha-1") is None


def test_forms_without_hidden_form_type_are_ignored() -> None:
    # §5.4 3.6: ignored, processing goes on: the hash is that of the rest.
    not_hidden = COMPLEX.replace("var='FORM_TYPE' type='hidden'", "var='FORM_TYPE'")
    without_form_type = COMPLEX.replace(
        "<field var='FORM_TYPE' type='hidden'>\n      <value>urn:xmpp:dataforms:softwareinfo"
        "</value>\n    </field>",
        "",
    )
    assert without_form_type != COMPLEX
    s = (
        "client/pc/el/Ψ 0.11<client/pc/en/Psi 0.11<http://jabber.org/protocol/caps<"
        "http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<"
        "http://jabber.org/protocol/muc<"
    )
    assert verification_string(query(not_hidden), "sha-1") == sha1_b64(s)
    assert verification_string(query(without_form_type), "sha-1") == sha1_b64(s)


def test_forms_are_sorted_by_form_type_and_fields_by_var() -> None:
    text = f"""<query xmlns='{DISCO}'>
      <identity category='client' type='phone'/>
      <feature var='urn:b'/><feature var='urn:a'/>
      <x xmlns='jabber:x:data' type='result'>
        <field var='FORM_TYPE' type='hidden'><value>urn:z</value></field>
        <field var='b'><value>2</value><value>1</value></field>
        <field var='a'/>
      </x>
      <x xmlns='jabber:x:data' type='result'>
        <field var='FORM_TYPE' type='hidden'><value>urn:y</value></field>
        <field var='c'><value>x</value></field>
      </x>
    </query>"""
    s = "client/phone//<urn:a<urn:b<urn:y<c<x<urn:z<a<b<1<2<"
    assert verification_string(query(text), "sha-1") == sha1_b64(s)


def test_interests_are_the_nodes_named_by_plus_notify() -> None:
    features = [
        "http://jabber.org/protocol/caps",
        "urn:xmpp:avatar:metadata+notify",
        "http://jabber.org/protocol/nick+notify",
        "eu.siacs.conversations.axolotl.devicelist+notify",
        "+notify",
    ]
    assert interests(features) == {
        "urn:xmpp:avatar:metadata",
        "http://jabber.org/protocol/nick",
        "eu.siacs.conversations.axolotl.devicelist",
    }
