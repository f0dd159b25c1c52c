"""Word lists the guards read: function words, filler, negation, scope, direction, numbers,
aliases, synonyms and antonyms. English only; lower case; written for prompts people type to an
assistant, not for any evaluation set.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that carry no question of their own: dropped before two prompts are compared word by word.
FUNCTION_WORDS = _words(
    """
    a an the this that these those there here it its it's is are was were be been being am
    do does did doing done have has had having i me my mine myself we us our ours you your yours
    he him his she her they them their theirs one's someone something anything
    can could would will shall should may might must
    of in on at for with about as into onto upon within via per
    and or but if then so also too very much many just one
    what's how's who's where's when's what which whom whose
    to from by than between
    """
)

# Politeness and framing: "hey, quick question: could you please tell me ..." asks no more than
# the bare question.
FILLER = _words(
    """
    please pls plz kindly hey hi hello thanks thank thx cheers question wondering wonder
    tell know let explain show give help assist need want like wanted wondering curious
    possible able way ways okay ok um uh actually basically really exactly simply
    describe require required requires needed
    i'd i'm i've you're we're anyone somebody someone say said ask asking any some
    number thing things stuff meaning mean means meant term phrase word
    process procedure steps step method syntax command formula considered known called located
    expected going current currently right now still yet usually typically generally normally
    topic subject available offer offered possible allowed okay fine
    """
)

# "what" and "which" frame almost any question; how, why, when, where and who ask different
# things and stay content words.

NEGATION = _words(
    """
    not no non never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt
    isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt
    except excluding exclude excluded excludes
    """
)

# Quantifiers and markers of how much of something is asked about.
SCOPE = _words(
    """
    all every each only both either whole entire total most least first last latest
    recent previous next top bottom few several many more less fewer
    daily weekly monthly yearly annually annual hourly nightly per average overall
    always sometimes usually often rarely ever once twice complete full detailed comprehensive
    brief
    """
)

# A preposition whose object changes the question when it changes or moves ("USD to EUR").
# "X vs Y" and "between X and Y" are symmetric, so "vs" is not one.
DIRECTION_PREPOSITIONS = {
    "to": "to",
    "into": "to",
    "onto": "to",
    "towards": "to",
    "toward": "to",
    "from": "from",
    "than": "than",
    "over": "over",
}
# Words that make a relation symmetric: the order of its two sides asks nothing new.
SYMMETRIC_CUES = _words(
    "differ differs difference differences different compare compared comparison vs versus or"
)
# Verbs whose subject and object swap the meaning when the same words come in another order.
DIRECTION_VERBS = _words(
    """
    beat beats defeated defeat defeats won win wins lost lose loses owe owes owed pay pays paid
    send sends sent give gives gave follow follows followed precede precedes preceded replace
    replaces replaced outrank cause causes caused eat eats ate kill kills killed call calls called
    convert converts converted translate translates translated succeed succeeds succeeded
    marry married divorce hire hired fire fired sue sued invade invaded attack attacked
    """
)

# Particles that turn a verb around: "zoom in" / "zoom out", "scroll up" / "scroll down".
PARTICLES = _words("up down out off away back over against")

# Verbs that frame a request without narrowing it ("is it worth buying AirPods"), although
# each has an opposite.
FRAMING_VERBS = _words("buy buying get getting use using make making start starting open add")

# Words that attach a restriction to what comes next: "policy for electronics", "GDP per
# capita", "files in the directory and subdirectories".
QUALIFYING = _words(
    "for in on at with about during within under of near inside outside without per and or plus"
)
DETERMINERS = _words("a an the my your our their his her its this that these those")

NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "dozen": 12,
}
NUMBER_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
ORDINAL_WORDS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
}

# Several spellings of one thing, to one token. Longest phrases are replaced first.
ALIASES: dict[str, tuple[str, ...]] = {
    "usd": (
        "us dollars",
        "us dollar",
        "u.s. dollars",
        "american dollars",
        "dollars",
        "dollar",
        "bucks",
        "usd",
    ),
    "eur": ("euros", "euro", "eur"),
    "gbp": ("british pounds", "pounds sterling", "pound sterling", "gbp", "quid"),
    "jpy": ("japanese yen", "yen", "jpy"),
    "cny": ("chinese yuan", "yuan", "renminbi", "rmb", "cny"),
    "inr": ("indian rupees", "indian rupee", "rupees", "rupee", "inr"),
    "cad": ("canadian dollars", "canadian dollar", "cad"),
    "aud": ("australian dollars", "australian dollar", "aud"),
    "chf": ("swiss francs", "swiss franc", "chf"),
    "btc": ("bitcoin", "btc"),
    "usa": (
        "united states of america",
        "united states",
        "u.s.a.",
        "u.s.a",
        "u.s.",
        "usa",
        "america",
    ),
    "uk": ("united kingdom", "great britain", "britain", "u.k.", "uk"),
    "uae": ("united arab emirates", "uae"),
    "nyc": ("new york city", "nyc"),
    "sf": ("san francisco", "sf"),
    "la": ("los angeles",),
    "dc": ("washington dc", "washington d.c.", "d.c."),
    "javascript": ("javascript", "js"),
    "typescript": ("typescript", "ts"),
    "python": ("python", "python3", "py"),
    "postgresql": ("postgresql", "postgres", "psql"),
    "kubernetes": ("kubernetes", "k8s"),
    "database": ("database", "databases", "db"),
    "password": ("passwords", "password", "passcode", "pw", "pwd"),
    "account": ("account", "accounts", "acct"),
    "information": ("information", "info"),
    "television": ("television", "tv"),
    "ai": ("artificial intelligence", "ai"),
    "ml": ("machine learning", "ml"),
    "km": ("kilometers", "kilometres", "kilometer", "kilometre", "km", "kms"),
    "mile": ("miles", "mile", "mi"),
    "kg": ("kilograms", "kilogram", "kilos", "kilo", "kg", "kgs"),
    "lb": ("lbs", "lb"),
    "meter": ("meters", "metres", "meter", "metre"),
    "cm": ("centimeters", "centimetres", "centimeter", "centimetre", "cm"),
    "celsius": ("degrees celsius", "degree celsius", "celsius", "centigrade", "°c"),
    "fahrenheit": ("degrees fahrenheit", "degree fahrenheit", "fahrenheit", "°f"),
    "hour": ("hours", "hour", "hrs", "hr"),
    "foot": ("feet", "foot", "ft"),
    "ounce": ("ounces", "ounce", "oz"),
    "inch": ("inches", "inch"),
    "mouse": ("mice", "mouse"),
    "tooth": ("teeth", "tooth"),
    "child": ("children", "child", "kids", "kid"),
    "person": ("people", "persons", "person"),
    "man": ("men", "man"),
    "woman": ("women", "woman"),
    "minute": ("minutes", "minute", "mins"),
    "seconds": ("seconds", "secs", "sec"),
    "mb": ("megabytes", "megabyte", "mb"),
    "gb": ("gigabytes", "gigabyte", "gb"),
    "kb": ("kilobytes", "kilobyte", "kb"),
    "percent": ("percent", "per cent", "percentage", "%"),
    "email": ("e-mail", "email", "emails", "e-mails", "mail"),
    "website": ("web site", "website", "site"),
    "phone": ("telephone", "phone", "cellphone", "cell phone", "mobile phone"),
}

# Two words that ask the same thing, both directions; stems are compared, so inflections match.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("buy", "purchase", "order", "get"),
    ("cancel", "call off", "terminate", "end"),
    ("change", "modify", "update", "edit", "alter", "amend"),
    ("reset", "change", "recover", "restore"),
    ("delete", "remove", "erase"),
    ("begin", "start", "commence"),
    ("finish", "complete", "end"),
    ("fix", "repair", "solve", "resolve", "troubleshoot"),
    ("error", "issue", "problem", "bug"),
    ("big", "large", "huge"),
    ("small", "little", "tiny"),
    ("fast", "quick", "rapid", "speedy"),
    ("car", "automobile", "vehicle"),
    ("refund", "reimburse"),
    ("register", "signup"),
    ("ship", "deliver", "send"),
    ("shipping", "delivery"),
    ("cost", "price", "charge", "fee"),
    ("cheap", "inexpensive", "affordable", "low-cost"),
    ("expensive", "costly", "pricey"),
    ("make", "create", "build", "generate"),
    ("write", "draft", "compose", "create", "make", "generate"),
    ("summarize", "summarise", "summary"),
    ("explain", "describe"),
    ("find", "locate", "search"),
    ("use", "utilize", "utilise"),
    ("need", "require"),
    ("job", "work", "employment"),
    ("movie", "film"),
    ("doctor", "physician"),
    ("picture", "photo", "image", "pic"),
    ("answer", "reply", "response"),
    ("contact", "reach"),
    ("receive", "get"),
    ("display", "list"),
    ("upgrade", "update"),
    ("near", "nearby"),
    ("happen", "occur"),
    ("allow", "permit", "let"),
    ("mistake", "error"),
    ("quit", "stop"),
    ("correct", "right", "proper"),
    ("meaning", "definition", "define", "mean"),
    ("best", "top", "ideal", "optimal"),
    ("improve", "raise", "boost"),
    ("work", "function"),
    ("symptom", "sign"),
    ("world", "earth"),
    ("see", "visit"),
    ("last", "final", "latest"),
    ("often", "frequently"),
    ("calculate", "compute"),
    ("convert", "change", "exchange", "turn"),
    ("install", "setup"),
)

# Phrases that say one thing several ways, rewritten to one form before words are compared.
REWRITES: dict[str, tuple[str, ...]] = {
    "how long": ("what is the length of", "what is the duration of", "length of", "duration of"),
    "how far": (
        "what is the distance between",
        "what is the distance from",
        "what is the distance to",
        "distance between",
        "distance from",
    ),
    "question": ("quick question", "a quick one"),
    "howmany": ("how many", "the number of", "number of", "the count of", "count of"),
    "why": ("how come", "for what reason", "what is the reason"),
    "how to": (
        "what is the way to",
        "what's the way to",
        "what are the steps to",
        "what is the process to",
        "what's the process to",
        "what is the procedure to",
        "what's the best way to",
        "what is the best way to",
        "steps to",
        "instructions for",
        "how would i",
        "how should i",
        "how can i",
        "how do i",
        "how do you",
        "how does one",
        "how can you",
        "how i can",
        "how one can",
    ),
    "what is": ("what's", "what are", "whats", "what is", "what r"),
    "define": (
        "what is the meaning of",
        "what's the meaning of",
        "what does the word",
        "meaning of",
        "definition of",
    ),
    "refund": ("money back", "my money back", "reimbursement"),
    "signin": ("sign in", "log in", "login", "logon", "log on", "signin"),
    "signout": ("sign out", "log out", "logout", "signout"),
    "signup": (
        "sign up",
        "signup",
        "create an account",
        "create account",
        "open an account",
        "register for an account",
    ),
    "one": ("a single", "single"),
    "latest": ("most recent", "latest", "newest"),
    "daily": ("a day", "per day", "each day", "every day", "daily"),
    "weekly": ("a week", "per week", "each week", "every week", "weekly"),
    "monthly": ("a month", "per month", "each month", "every month", "monthly"),
    "yearly": ("a year", "per year", "each year", "every year", "annually", "annual", "yearly"),
    "nightly": ("a night", "per night", "each night", "every night", "nightly"),
    "2": ("a couple of", "a pair of"),
}

# Opposites: a change from one to the other asks the opposite question.
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("cheap", "expensive"),
    ("cheapest", "most expensive"),
    ("best", "worst"),
    ("most", "least"),
    ("more", "less"),
    ("much", "little"),
    ("tighten", "loosen"),
    ("show", "hide"),
    ("brighten", "darken"),
    ("attach", "detach"),
    ("inhale", "exhale"),
    ("thaw", "freeze"),
    ("widen", "narrow"),
    ("expand", "collapse"),
    ("shrink", "grow"),
    ("approve", "reject"),
    ("accept", "decline"),
    ("hire", "fire"),
    ("brief", "detailed"),
    ("short", "detailed"),
    ("quick", "detailed"),
    ("summary", "breakdown"),
    ("for", "against"),
    ("pro", "anti"),
    ("more", "fewer"),
    ("increase", "decrease"),
    ("increase", "reduce"),
    ("raise", "lower"),
    ("high", "low"),
    ("higher", "lower"),
    ("highest", "lowest"),
    ("before", "after"),
    ("early", "late"),
    ("earliest", "latest"),
    ("first", "last"),
    ("fast", "slow"),
    ("fastest", "slowest"),
    ("hot", "cold"),
    ("warm", "cool"),
    ("big", "small"),
    ("biggest", "smallest"),
    ("large", "small"),
    ("largest", "smallest"),
    ("long", "short"),
    ("longest", "shortest"),
    ("old", "new"),
    ("oldest", "newest"),
    ("young", "old"),
    ("good", "bad"),
    ("pros", "cons"),
    ("advantage", "disadvantage"),
    ("benefit", "drawback"),
    ("benefit", "risk"),
    ("buy", "sell"),
    ("import", "export"),
    ("upload", "download"),
    ("add", "remove"),
    ("enable", "disable"),
    ("open", "close"),
    ("start", "stop"),
    ("start", "end"),
    ("win", "lose"),
    ("gain", "lose"),
    ("gain", "loss"),
    ("profit", "loss"),
    ("push", "pull"),
    ("input", "output"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("compress", "decompress"),
    ("lock", "unlock"),
    ("include", "exclude"),
    ("accept", "reject"),
    ("allow", "deny"),
    ("allow", "block"),
    ("safe", "dangerous"),
    ("healthy", "unhealthy"),
    ("legal", "illegal"),
    ("possible", "impossible"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("above", "below"),
    ("over", "under"),
    ("inside", "outside"),
    ("north", "south"),
    ("east", "west"),
    ("left", "right"),
    ("up", "down"),
    ("uppercase", "lowercase"),
    ("upper", "lower"),
    ("in", "out"),
    ("on", "off"),
    ("easy", "hard"),
    ("easy", "difficult"),
    ("simple", "complex"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("light", "heavy"),
    ("light", "dark"),
    ("wet", "dry"),
    ("positive", "negative"),
    ("true", "false"),
    ("success", "failure"),
    ("male", "female"),
    ("man", "woman"),
    ("day", "night"),
    ("morning", "evening"),
    ("summer", "winter"),
    ("spring", "autumn"),
    ("spring", "fall"),
    ("arrive", "depart"),
    ("arrival", "departure"),
    ("borrow", "lend"),
    ("debit", "credit"),
    ("deposit", "withdraw"),
    ("income", "expense"),
    ("asset", "liability"),
    ("rise", "fall"),
    ("ascending", "descending"),
    ("minimize", "maximize"),
    ("overestimate", "underestimate"),
    ("senior", "junior"),
    ("beginner", "expert"),
    ("beginner", "advanced"),
    ("public", "private"),
    ("online", "offline"),
    ("internal", "external"),
    ("front", "back"),
    ("top", "bottom"),
)

# Prefixes that turn a word into its opposite: "disadvantage", "unlock", "impossible".
NEGATING_PREFIXES = ("dis", "un", "in", "im", "il", "ir", "non", "anti", "de", "mis")
