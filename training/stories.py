"""Procedural children's stories: the built-in training corpus, written for this project from scratch.

Short stories in simple words, in the spirit of TinyStories, for a model trained for minutes on a CPU.
A story is a cast (hero, friend, parent, place, thing), one of eleven plots and a tiny template
language: "[a|b]" picks one alternative (innermost first), "{h.his}" fills in a field of the cast,
and a "/" step starts a new paragraph (paragraphs are separated by one newline, never a blank line,
so stories can be stored one per blank-line-separated block). One random.Random drives everything,
so a seed gives the same stories in every process.

    story(7)                      one story
    stories(100, seed=0)          a list; stories(5) is a prefix of stories(10)
    iter_stories(seed=0)          an endless, deterministic stream
    vocabulary()                  every word a story can contain (lowercase, see words())
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Iterator

# ----------------------------------------------------------------------------- the cast
GIRLS = ("Lily", "Mia", "Anna", "Zoe", "Lucy", "Emma", "Amy", "Sue", "Ella", "Sara")
BOYS = ("Tom", "Ben", "Sam", "Max", "Tim", "Jack", "Leo", "Bob", "Dan", "Jake")
TOWN = ("in a small house", "in a big house", "in a little town", "near a big park")
ANIMALS = {  # kind -> (names, where it lives)
    "cat": (("Kitty", "Mittens", "Tiger"), ("in a big house", "in a small house")),
    "dog": (("Spot", "Buddy", "Rex"), ("in a big house", "in a small house")),
    "bird": (("Tweety", "Pip", "Sunny"), ("in a tall tree", "in a little nest")),
    "bunny": (("Fluffy", "Hoppy", "Coco"), ("in a hole in the garden", "near a big farm")),
    "bear": (("Brownie", "Fuzzy"), ("in the forest", "in a big cave")),
    "duck": (("Quacky", "Daisy"), ("by a little pond", "on a farm")),
    "owl": (("Hoot", "Ollie"), ("in a tall tree", "in the forest")),
    "elephant": (("Ellie", "Peanut"), ("by a big river", "in the forest")),
}
INTRO_ADJ = ("little", "little", "happy", "kind", "small")


def an(phrase: str) -> str:
    """The phrase with its indefinite article: "an orange kite", "a red ball"."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


class _Named:
    """Prints as its name; `x.He` is `x.he` with a capital letter, for fields that start a sentence."""

    def __str__(self):
        return self.name

    def __getattr__(self, attr):
        if attr[:1].isupper():
            text = getattr(self, attr[0].lower() + attr[1:])
            return text[:1].upper() + text[1:]
        raise AttributeError(attr)


@dataclass
class Who(_Named):
    name: str
    kind: str
    female: bool
    adj: str = "little"
    home: str = ""
    animal: bool = False
    first: str = ""  # how the story first names them ("her friend Tom", "his mom")
    ref: str = ""    # and after that ("Tom", "his mom")

    he = property(lambda s: "she" if s.female else "he")
    him = property(lambda s: "her" if s.female else "him")
    his = property(lambda s: "her" if s.female else "his")
    himself = property(lambda s: "herself" if s.female else "himself")
    intro = property(lambda s: f"{an(s.adj + ' ' + s.kind)} named {s.name}")
    full = property(lambda s: f"{s.name} the {s.kind}" if s.animal else s.name)
    a_kind = property(lambda s: an(s.kind))


@dataclass
class Thing(_Named):
    noun: str
    adjs: tuple
    verb: str = "play with"  # what you do with it
    tags: str = ""           # which plots it fits
    damage: str = ""         # how it looks once broken
    fix: str = ""            # how to mend it
    up: str = ""             # how it ends up in a tree
    adj: str = ""

    name = property(lambda s: f"{s.adj} {s.noun}".strip())
    a = property(lambda s: an(s.name))


THINGS = (
    Thing("ball", ("red", "blue", "big", "yellow", "bouncy"), "throw", "lose share tree", up="{h} threw the ball up high."),
    Thing("kite", ("red", "blue", "orange", "green", "big"), "fly", "lose share break tree",
          "Now it had a big hole.", "put tape on the hole", "A big wind came and pulled the kite up high."),
    Thing("toy car", ("red", "blue", "little", "fast", "new"), tags="lose share break", damage="One wheel came off.",
          fix="put the wheel back on"),
    Thing("doll", ("pretty", "little", "old", "soft"), tags="lose share break dark", damage="One arm came off.",
          fix="sew the arm back on"),
    Thing("teddy bear", ("brown", "soft", "big", "old"), "hug", "lose share break dark",
          "One ear came off.", "sew the ear back on"),
    Thing("drum", ("little", "red", "new"), "play", "lose share break", "Now it had a big hole.",
          "put tape on the hole"),
    Thing("hat", ("red", "big", "old", "funny", "blue"), tags="lose tree dark",
          up="Then a big wind came and blew the hat off {h.his} head."),
    Thing("book", ("big", "new", "old", "red"), "read", "lose share"),
    Thing("box", ("big", "old", "red", ""), tags="share dark"),
)
SNACKS = (Thing("apple", ("red", "green", "")), Thing("cookie", ("big", "sweet")),
          Thing("banana", ("yellow", "big")), Thing("orange", ("big", "")))
DOGS = (Thing("dog", ("big", "big brown", "big black", "big white")),)
HELP_LESSON = {"friend": "[friends help each other|it is good to have a friend]",
               "parent": "[it is good to ask for help|{h.his} {p.kind} was always there to help]"}


@dataclass
class Place:
    to: str             # "to the park"
    at: str             # "at the park"
    acts: tuple         # things to do there, in the base form
    spots: tuple = ()   # where a lost thing can hide
    build: str = ""     # something to build there together
    thing: str = ""     # ... and its noun
    brave: str = ""     # something scary to try the first time
    tags: str = ""      # which plots it fits; "animal": animals can go there


PLACES = (
    Place("to the park", "at the park", ("play on the swings", "go down the slide", "run on the green grass"),
          ("under the slide", "behind a big tree", "in the tall grass", "under a bench"),
          "a big fort of sticks", "fort", "go down the big slide", "out tree go build brave animal"),
    Place("to the garden", "in the garden", ("look at the pretty flowers", "water the flowers", "dig in the dirt",
                                             "chase the butterflies"),
          ("under a big leaf", "behind the flowers", "in the tall grass", "under a bush"),
          brave="climb the tall tree", tags="out tree go brave animal"),
    Place("to the forest", "in the forest", ("walk under the tall trees", "look for pretty rocks",
                                             "listen to the birds", "pick some berries"),
          ("behind a big rock", "under a log", "in a pile of leaves", "under a bush"),
          "a big fort of sticks", "fort", "walk over the old bridge", "out tree go build brave animal"),
    Place("to the beach", "at the beach", ("play in the sand", "look for shells", "splash in the water"),
          ("in the sand", "behind a big rock", "under a towel"),
          "a big sand castle", "castle", "jump in the big waves", "out go build brave animal"),
    Place("to the farm", "on the farm", ("feed the cows", "see the pigs", "play with the little ducks"),
          ("in the hay", "behind the barn", "next to the pigs"),
          brave="ride the big horse", tags="out tree go brave animal"),
    Place("to school", "at school", ("draw pictures", "sing songs", "play with blocks"),
          ("under a desk", "in the toy box", "behind the door"),
          "a tall tower of blocks", "tower", "sing a song for the class", "go build brave"),
    Place("home", "at home", ("play with blocks", "draw pictures", "read a book"),
          ("under the bed", "behind the door", "in the toy box", "under a chair"),
          "a tall tower of blocks", "tower", tags="home build animal"),
)
IRREGULAR = {"go": "went", "ride": "rode", "sing": "sang", "dig": "dug", "build": "built", "feed": "fed",
             "see": "saw", "draw": "drew", "read": "read", "run": "ran"}


def past(phrase: str) -> str:
    """The phrase with its first word in the past tense: "go down the slide" -> "went down the slide"."""
    verb, _, rest = phrase.partition(" ")
    if not verb:
        return ""
    verb = IRREGULAR.get(verb) or verb + ("d" if verb.endswith("e") else "ed")
    return f"{verb} {rest}".strip()


# ----------------------------------------------------------------------------- the plots
@dataclass
class Plot:
    name: str
    steps: tuple
    where: str = ""        # a tag the place must have
    obj: str = "share"     # a tag the thing must have
    animals: bool = True   # can the hero be an animal
    pairs: dict = field(default_factory=dict)  # choices that must agree: {"idea": ((a1, a2), ...)} -> {idea1} {idea2}


INTRO = ("[Once upon a time, there was {h.intro}. {h.He} lived {h.home}.|Once upon a time, there was {h.intro}."
         "|{h.Intro} lived {h.home}.|There was once {h.intro}.]",
         "[{h.He} liked to play outside.|{h.He} loved to laugh and play.|{h.He} loved to play with {h.his} friends.|]")

PLOTS = (
    Plot("lost", where="go", obj="lose", steps=(
        "{h} had {o.a}. [{h.He} loved it very much.|It was {h.his} favorite thing.|{h.He} took it everywhere.]",
        "One day, {h} went {pl.to} with {h.his} {o.noun}. {h} {did1}, and then {h.he} {did2}.", "/",
        "[After a while|Later], {h} looked for {h.his} {o.noun}, but it was gone!",
        "[{h} was very sad.|{h} felt sad and began to cry.|{h} was sad. {h.He} wanted {h.his} {o.noun} back.]",
        "[{h} called, \"{o.Noun}, where are you?\" But there was no answer.|]",
        "[Then|Just then], {x.first} [came over|saw {h.him}]. \"What is wrong, {h}?\" {x.he} asked.",
        "\"I lost my {o.noun}!\" [said|cried] {h}. \"Do not worry. I will help you [look|find it],\" said {x.ref}.",
        "[They looked {s1}, but it was not there. |]Then {x.ref} looked {s2}. There was the {o.noun}!",
        "[{h} was so happy!|{h} jumped up and down.] [{h.He} gave {x.ref} a big hug.|\"Thank you!\" said {h}.]", "/",
        "[From that day on, {h} always kept {h.his} {o.noun} close.|{h} learned that {help}.]")),
    Plot("share", steps=(
        "{h} had {o.a}. [{h.He} liked to {o.verb} it every day.|{h.He} loved it very much.]",
        "One day, {h} was {pl.at} with {h.his} {o.noun}. Then {h.his} friend {f.full} [came over|came to play].",
        "[{f} watched {h} {o.verb} {h.his} {o.noun}. {f.He} wanted to play too.|]",
        "[\"Can I play too?\" asked {f}.|\"Can I {o.verb} your {o.noun}?\" asked {f}."
        "|\"That is a [nice|fun] {o.noun}! Can I {o.verb} it too?\" asked {f}.]",
        "[\"No! It is mine!\" said {h}.|{h} did not want to share. \"No, it is my {o.noun}!\" {h.he} said.]",
        "{f} [was sad|felt sad] and [walked away|sat down all alone].", "/",
        "{h} played alone, but it was not fun [anymore|at all].",
        "{h} looked at {f}. {h.He} did not like to see {h.his} friend sad.",
        "{h} [walked|ran] to {f}. \"I am sorry,\" said {h}. "
        "\"[You can {o.verb} my {o.noun} too.|We can take turns.]\"",
        "{f} smiled. \"Thank you!\" {f.he} said. [They took turns with the {o.noun}.|{h} and {f} took turns.]",
        "[They had so much fun.|They laughed and played all day.]", "/",
        "[{h} learned that sharing is fun.|From that day on, {h} always shared {h.his} toys.|"
        "Sharing made them both happy.]")),
    Plot("broken", obj="break", steps=(
        "{h} had {o.a}. [It was {h.his} favorite toy.|{h.He} loved it very much.]",
        "[One day|One morning], {h} played with {h.his} {o.noun} {pl.at}.",
        "[But then {h} tripped and fell, and the {o.noun} hit the ground.|But then {h} dropped the {o.noun}."
        "|But then the {o.noun} fell down with a bump.] {o.damage}",
        "[{h} began to cry.|{h} was very sad.] \"Oh no! My {o.noun} is broken!\" {h.he} [cried|said].", "/",
        "[{h} looked at {h.his} poor {o.noun}. {h.He} did not know what to do.|]",
        "{x.First} [came over|heard {h.him}|ran to {h.him}]. \"Do not be sad,\" said {x.ref}. "
        "\"[I can help you fix it.|We can fix it together.]\"",
        "[{x.Ref} and {h} worked together to {o.fix}.|{x.Ref} helped {h} {o.fix}.]",
        "Soon the {o.noun} was [as good as new|fixed]!",
        "[{h} was so happy!|{h} smiled a big smile.] [\"Thank you!\" said {h}.|{h.He} gave {x.ref} a big hug.]", "/",
        "[{h} learned that working together is [good|fun].|From that day on, {h} was very careful with {h.his} "
        "{o.noun}.|{h} learned that {help}.]")),
    Plot("rain", where="out", steps=(
        "One [sunny|bright] morning, {h} wanted to go {pl.to}. {h.He} wanted to {do1}.",
        "{h} ran to the door. But when {h.he} looked outside, it was raining!",
        "[{h} was sad.|{h} felt sad.] \"I want to play outside,\" {h.he} said.", "/",
        "[{h} sat by the window and watched the rain. Drip, drop, drip!|]",
        "{h.His} {p.kind} [saw that {h} was sad|gave {h.him} a hug].",
        "[\"We can play inside!\" said {h.his} {p.kind}. They [built a tall tower of blocks|made a fort with a big "
        "blanket] and read a book together.|\"We can put on our boots and jump in the puddles!\" said {h.his} "
        "{p.kind}. {h} took {h.his} [red|yellow|little] umbrella, and they jumped in every puddle. Splash!]",
        "[Soon|After a while], the rain stopped, and the sun came out. [There was a big rainbow in the sky!|"
        "{h} saw a big rainbow!]",
        "{h} and {h.his} {p.kind} went {pl.to}, and {h} got to {do1}.", "/",
        "[It was a happy day after all.|{h} learned that a rainy day can be fun too.|{h} was very happy.]")),
    Plot("tree", where="tree", obj="tree", steps=(
        "{h} and {h.his} friend {f.full} were playing with {h.his} {o.name} {pl.at}.",
        "{o.up} It [got stuck|landed] in a tall tree!",
        "{h} jumped and jumped, but {h.he} could not reach it. {f} tried too, but {f.he} was too small.",
        "[\"Come down, {o.noun}!\" {h} called. But the {o.noun} did not move.|]",
        "[{h} was sad.|\"What can we do?\" asked {h}.]", "/",
        "Then {f} had an idea. {idea1}", "{idea2}",
        "[Down came the {o.noun}!|The {o.noun} fell down into {h.his} hands!]",
        "\"We did it!\" [said {h}|they shouted|{h} and {f} laughed].", "/",
        "[{h} and {f} learned that working together is [good|fun].|They were a great team.|"
        "From that day on, they always helped each other.]"), pairs={"idea": (
            ("\"We can use that big box!\" said {f}.",
             "{f} pushed the box under the tree, and {h} stood on it. {h.He} reached up high and pulled."),
            ("\"We can get a long stick!\" said {f}.",
             "They found a long stick. {h} held it up high and gave the {o.noun} a little push."),
            ("\"We can shake the tree together!\" said {f}.",
             "They held the tree and shook it as hard as they could."))}),
    Plot("dog", where="out", animals=False, steps=(
        "One day, {h} went {pl.to} with {h.his} {p.kind}. {h} {did1}. {h.He} was having so much fun.",
        "[Suddenly|Then], {d.a} ran up to {h}. \"Woof! Woof!\" it barked.",
        "[The dog was bigger than {h}!|]",
        "[{h} was very scared.|{h} felt scared.] [{h.He} hid behind {h.his} {p.kind}.|{h.He} wanted to run away.]",
        "/", "But the dog did not [bite|growl]. It sat down and wagged its tail. It had a ball in its mouth.",
        "\"Do not be scared,\" said {h.his} {p.kind}. \"[It is a nice dog.|It just wants to play.]\"",
        "{h} took a deep breath and was brave. {h.He} threw the ball, and the dog ran to get it.",
        "[The dog brought the ball back. |]{h} laughed.",
        "[They played [together |]until it was time to go home.|They played all afternoon.]", "/",
        "[{h} was not scared of big dogs anymore.|{h} learned that big dogs can be nice too.|"
        "{h} was proud that {h.he} was brave.]")),
    Plot("dark", where="home", obj="dark", steps=(
        "One night, it was time for bed. {h.His} {p.kind} [read {h.him} a story and |]turned off the light.",
        "The room was very dark. {h} did not like the dark.", "{scare1}",
        "[{h} pulled the blanket over {h.his} head.|]",
        "\"{p}! [Help!|Come here!]\" {h} [called|cried].", "/",
        "{h.His} {p.kind} came in and turned on the light. {scare2}",
        "{h.His} {p.kind} gave {h.him} a big hug. \"There is nothing to be scared of,\" {p.he} said.",
        "[{p.He} left a little light on.|]", "/",
        "[From that day on, {h} was not scared of the dark.|{h} smiled and closed {h.his} eyes. {h.He} was not "
        "scared anymore.|{h} felt brave and went to sleep.]"), pairs={"scare": (
            ("Then {h} saw a big shadow on the wall. It looked like a monster!",
             "It was just {h.his} {o.name} on the chair! {h} laughed."),
            ("Then {h} heard a noise at the window. Tap, tap, tap!",
             "It was just a little branch in the wind. {h} felt a little silly."),
            ("Then {h} saw two big eyes under the bed!", "It was just the family cat! \"Meow,\" said the cat."))}),
    Plot("sorry", where="build", steps=(
        "{h} and {h.his} friend {f.full} were playing {pl.at}. They wanted to build {pl.build}.",
        "They worked [hard|for a long time], and it got [bigger and bigger|taller and taller].",
        "[It was the biggest {pl.thing} they had ever made.|]",
        "[But then|Then] {h} [tripped|ran too fast] and bumped into the {pl.thing}. [Crash!|Oh no!] It fell down!",
        "{f} was very angry. \"You broke it!\" {f.he} shouted.",
        "{h} felt bad. {h.He} did not mean to [break it|do it].", "/",
        "\"I am sorry, {f},\" said {h}. \"[It was an accident.|I did not mean to.] Can we build it again together?\"",
        "{f} [thought for a moment|looked at {h}] and smiled. \"Yes, we can!\" {f.he} said.",
        "They built the {pl.thing} again. [This time, it was even bigger!|It was the best one ever!]", "/",
        "[{h} learned that it is good to say sorry.|They were best friends again.|"
        "Saying sorry made everything better.]")),
    Plot("new friend", where="go", steps=(
        "One day, {h} went {pl.to}. {h.He} {did1}.",
        "Then {h} saw [a little {f.kind}|{f.a_kind}] [sitting|standing] all alone. The {f.kind} looked sad.",
        "{h} walked over. \"Hi! My name is {h}. What is your name?\" {h.he} asked.",
        "\"My name is {f},\" said the {f.kind}. \"[I am new here.|I do not have any friends.]\"", "/",
        "\"Do you want to play with me?\" asked {h}. {f} [smiled a big smile|smiled]. \"Yes, please!\" {f.he} said.",
        "They {did2} together.[ {h} shared {h.his} {s.name} with {f}.|]",
        "[They ran and jumped and laughed.|]",
        "[They laughed and had so much fun.|{f} was not sad anymore.]", "/",
        "[From that day on, {h} and {f} were best friends.|{h} was happy that {h.he} made a new friend.|"
        "{h} learned that it is fun to make new friends.]")),
    Plot("gift", animals=False, steps=(
        "{h.His} {p.kind} had a birthday [soon|the next day]. {h} wanted to give {p.him} a [special|nice] gift.",
        "[But what could {h.he} give?|{h} thought and thought.] Then {h.he} had an idea! {gift1}", "/",
        "[{h} hid {gift2} under {h.his} bed. It was a secret!|]",
        "The next day, {h} gave {gift2} to {h.his} {p.kind}. \"Happy birthday!\" said {h}.",
        "{h.His} {p.kind} was [so|very] surprised. \"[Thank you! It is beautiful!|What a nice gift!]\" {p.he} said.",
        "{p.He} gave {h} [a big hug|a big hug and a kiss].", "/",
        "[{h} felt warm and happy inside.|{h} learned that giving makes you happy too.|"
        "{h} was proud of {h.his} gift.]"), pairs={"gift": (
            ("{h} went to the garden and picked some pretty flowers.", "the flowers"),
            ("{h} sat down to draw a picture of the whole family with a big sun.", "the picture"),
            ("{h} made a card with a big red heart on it.", "the card"))}),
    Plot("brave", where="brave", steps=(
        "One day, {h} went {pl.to} with {h.his} friend {f.full}.",
        "{f} wanted to {pl.brave}. {h} wanted to try too, but {h.he} was scared.[ It looked so big!|]",
        "[{h.His} legs began to shake.|]",
        "{f} went first. \"[Come on!|Wow!] It is so much fun!\" {f.he} said. \"I am too scared,\" said {h}.", "/",
        "\"You can do it! I will be right here,\" said {f}.",
        "{h} took a deep breath. [{h.He} counted to three. |]Then {h.he} {brave_did}!",
        "[It was so much fun!|It was not scary at all!] \"Again! Again!\" {h} [shouted|laughed].", "/",
        "[{h} felt very proud of {h.himself}.|{h} learned that it is good to be brave.|"
        "From that day on, {h} was not scared to {pl.brave}.]")),
)
PLOT_NAMES = tuple(p.name for p in PLOTS)


# ----------------------------------------------------------------------------- writing a story
_ALT = re.compile(r"\[([^\[\]]*)\]")


def _fill(text: str, rng: random.Random, ctx: dict) -> str:
    """Pick the [a|b] alternatives (innermost first), then fill the {fields}; repeat for filled-in templates."""
    for _ in range(4):
        while "[" in text:
            text = _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), text, count=1)
        if "{" not in text:
            break
        text = text.format(**ctx)
    return text


def _who(rng: random.Random, animal: bool, taken: str = "") -> Who:
    if animal:
        kind = rng.choice(tuple(ANIMALS))
        (names, homes), female = ANIMALS[kind], rng.random() < 0.5
    else:
        female = rng.random() < 0.5
        kind, names, homes = ("girl", GIRLS, TOWN) if female else ("boy", BOYS, TOWN)
    name = rng.choice([n for n in names if n != taken])
    return Who(name, kind, female, rng.choice(INTRO_ADJ), rng.choice(homes), animal)


def _cast(rng: random.Random, plot: Plot) -> dict:
    animal = plot.animals and rng.random() < 0.3
    h = _who(rng, animal)
    f = _who(rng, animal, taken=h.name)
    f.first, f.ref = f"{h.his} friend {f.full}", f.name
    p = Who("Mom", "mom", True) if rng.random() < 0.5 else Who("Dad", "dad", False)
    p.first = p.ref = f"{h.his} {p.kind}"
    x = rng.choice((f, p))
    places = [pl for pl in PLACES if plot.where in pl.tags.split() + [""] and (not animal or "animal" in pl.tags)]
    pl = rng.choice(places)
    things = [t for t in THINGS if plot.obj in t.tags.split()]
    o, s, d = (replace(t, adj=rng.choice(t.adjs)) for t in (rng.choice(things), rng.choice(SNACKS), DOGS[0]))
    acts = rng.sample(pl.acts, 2)
    ctx = dict(h=h, f=f, p=p, x=x, pl=pl, o=o, s=s, d=d, do1=acts[0], did1=past(acts[0]), did2=past(acts[1]),
               help=HELP_LESSON["friend" if x is f else "parent"], brave_did=past(pl.brave))
    ctx["s1"], ctx["s2"] = rng.sample(pl.spots, 2) if pl.spots else ("", "")
    for key, options in plot.pairs.items():
        ctx[key + "1"], ctx[key + "2"] = rng.choice(options)
    return ctx


def generate(rng_or_seed, plot: str | None = None) -> tuple[str, str]:
    """(plot name, story) for one story; `plot` picks one of PLOT_NAMES instead of a random one."""
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    if plot is not None and plot not in PLOT_NAMES:
        raise ValueError(f"There is no plot called {plot!r}; choose one of {', '.join(PLOT_NAMES)}.")
    chosen = rng.choice(PLOTS) if plot is None else PLOTS[PLOT_NAMES.index(plot)]
    ctx = _cast(rng, chosen)
    paragraphs = [[]]
    for step in INTRO + chosen.steps:
        if step == "/":
            paragraphs.append([])
        elif text := _fill(step, rng, ctx):
            paragraphs[-1].append(text)
    return chosen.name, "\n".join(" ".join(p) for p in paragraphs if p)


def story(rng_or_seed, plot: str | None = None) -> str:
    """One story, from a random.Random (advanced in place) or a seed."""
    return generate(rng_or_seed, plot)[1]


def iter_stories(seed: int = 0) -> Iterator[str]:
    """An endless stream of stories; the same seed gives the same stream in every process."""
    rng = random.Random(seed)
    while True:
        yield story(rng)


def stories(n: int, seed: int = 0) -> list[str]:
    """The first n stories of iter_stories(seed)."""
    return list(islice(iter_stories(seed), n))


# ----------------------------------------------------------------------------- vocabulary
def words(text: str) -> list[str]:
    """The words of a text, lowercased, punctuation stripped (the stories use no apostrophes or hyphens)."""
    return re.findall(r"[a-z]+", text.lower())


def _texts():
    yield from GIRLS + BOYS + TOWN + INTRO_ADJ + INTRO + tuple(HELP_LESSON.values())
    yield "a an the named friend girl boy she he her him his herself himself mom dad"
    for kind, (names, homes) in ANIMALS.items():
        yield from (kind, *names, *homes)
    for t in THINGS + SNACKS + DOGS:
        yield from (t.noun, *t.adjs, t.verb, t.damage, t.fix, t.up)
    for pl in PLACES:
        yield from (pl.to, pl.at, pl.build, pl.thing, pl.brave, past(pl.brave), *pl.spots, *pl.acts)
        yield from map(past, pl.acts)
    for plot in PLOTS:
        yield from plot.steps
        yield from (text for options in plot.pairs.values() for pair in options for text in pair)


VOCABULARY = frozenset(w for text in _texts() for w in words(re.sub(r"\{[^{}]*\}", " ", text)))


def vocabulary() -> set[str]:
    """Every word a story can contain, lowercased and without punctuation (as words() splits them)."""
    return set(VOCABULARY)
