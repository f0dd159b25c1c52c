"""Customer-support synonyms and idioms that let a few hundred examples cover everyday wording."""

from __future__ import annotations

from surgeflow.agents.retrieval import Tokenizer

# Idioms whose meaning is not in any one word. Keys are regular expressions over lowercased text
# (apostrophes removed), values the canonical word they stand for.
PHRASES = {
    r"(?:money|pay|paid)(?: \w+)? back|reimburs\w*": "refund",
    r"sen[dt](?: \w+){0,2} back|bring(?: \w+)? back": "return",
    r"call(?:ed|ing)? off|stop (?:my |the )?order|dont (?:send|ship)": "cancel",
    r"(?:log|sign)(?:ged|ging)? ?(?:in|into|on)|login|signin": "login",
    r"sold out|out of stock|back in stock|available again|restock\w*": "restock",
    r"on (?:its|the) way|in transit": "transit",
    r"next day|same day|faster|quicker|by (?:monday|tuesday|wednesday|thursday|friday)": "express",
    r"(?:real|actual|live) (?:person|human|agent)|speak to|talk to": "human",
    r"mailing list|newsletters?|marketing emails?|promotional emails?": "newsletter",
    r"made (?:of|from)|what is \w+ made": "material",
    r"pick ?up point|parcel locker|locker|collect(?:ion)? point": "pickup",
    r"pay (?:later|monthly|in parts)|split (?:the )?(?:payment|cost)|spread the cost": "instalment",
}

# Canonical word -> words customers use for it in this domain. Stemmed on both sides.
SYNONYMS = {
    "parcel": ["package", "packet", "stuff"],
    "refund": ["repay", "repayment", "chargeback"],
    "cancel": ["cancelation", "undo", "abort", "revoke"],
    "exchange": ["swap", "replace"],
    "carrier": ["courier", "ups", "fedex", "dhl", "usps"],
    "shipping": ["postage"],
    "discount": ["voucher", "coupon", "promo", "promotional"],
    "loyalty": ["reward", "rewards", "points", "membership"],
    "card": ["visa", "mastercard", "amex", "debit", "credit"],
    "declined": ["rejected", "refused", "bounced", "fail", "failed", "failing"],
    "warranty": ["guarantee", "warrantee"],
    "damaged": ["broken", "smashed", "cracked", "shattered", "faulty", "defective", "dented"],
    "instalment": ["installment", "installments", "instalments", "monthly", "klarna"],
    "password": ["passcode", "pwd"],
    "human": ["person", "agent", "manager", "supervisor", "representative", "someone", "staff"],
    "upset": [
        "angry",
        "furious",
        "unhappy",
        "disappointed",
        "dissatisfied",
        "unacceptable",
        "ridiculous",
        "terrible",
        "awful",
        "horrible",
        "appalling",
        "disgraceful",
        "disgusting",
        "shocking",
        "outrageous",
        "worst",
        "rude",
        "useless",
        "pathetic",
        "complain",
        "complaint",
        "escalate",
    ],
    "size": ["fit", "fits", "sizing", "measurements", "small", "large", "medium"],
    "material": ["fabric", "wash", "care", "dimensions", "specs", "specification"],
}

support_tokenizer = Tokenizer(synonyms=SYNONYMS, phrases=PHRASES)
