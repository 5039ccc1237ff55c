"""Objects a caption mentions and objects an image contains: the report's hallucination analysis.

Two vocabularies behind one protocol. COCO: the 80 instance categories, each with the synonyms
of Rohrbach et al. 2018 ("Object Hallucination in Image Captioning", the CHAIR metric). The
built-in shapes set: objects are "colour shape" pairs ("red circle"), because a caption that
gets the shape right and the colour wrong still describes something that is not there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Protocol

from captioner.data.instances import Kind, instance_labels
from captioner.data.shapes import COLOURS, NUMBER_WORDS, SHAPES, SIZE_WORDS

# Category: synonyms (singular; plurals are derived). After CHAIR's synonyms.txt, trimmed of
# misspellings and duplicates.
_COCO_SYNONYMS = """
person: person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, baby,
  worker, passenger, sister, brother, biker, policeman, cop, officer, lady, cowboy, bride, groom,
  male, female, guy, traveler, mother, father, gentleman, pitcher, player, skier, snowboarder,
  skater, skateboarder, surfer, tennis player, batter, catcher, umpire, teenager, student,
  driver, doctor, soldier, bicyclist, cyclist, shopper, tourist, spectator, crowd
bicycle: bicycle, bike, unicycle, minibike, trike
car: car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle: motorcycle, scooter, motor bike, motor cycle, motorbike, moped
airplane: airplane, jetliner, plane, air plane, monoplane, aircraft, jet, airbus, biplane,
  seaplane, airliner
bus: bus, minibus, trolley
train: train, locomotive, tramway, caboose, tram
truck: truck, pickup, lorry, hauler, firetruck
boat: boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht,
  kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft, tugboat,
  schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, steamboat, riverboat
traffic light: traffic light, street light, traffic signal, stop light, streetlight, stoplight
fire hydrant: fire hydrant, hydrant
stop sign: stop sign
parking meter: parking meter, meter
bench: bench, pew
bird: bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl,
  heron, hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl,
  shorebird, woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, gull, swan,
  bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, rooster, sandpiper,
  crow, raven, turkey, oriole, warbler, magpie, peacock, cockatiel, lorikeet, puffin, vulture,
  condor, macaw, peafowl, cockatoo, songbird, hen, chicken
cat: cat, kitten, feline, tabby, kitty
dog: dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull,
  collie, pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog,
  sheepdog, weimaraner, corgi, greyhound, retriever, hound, whippet, husky
horse: horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang,
  clydesdale, bronco
sheep: sheep, lamb, ram, goat, ewe
cow: cow, cattle, ox, calf, holstein, heifer, buffalo, bull, zebu, bison
elephant: elephant
bear: bear, grizzly, cub
zebra: zebra
giraffe: giraffe
backpack: backpack, knapsack
umbrella: umbrella, parasol
handbag: handbag, wallet, purse, briefcase
tie: tie, bow tie, necktie
suitcase: suitcase, suit case, luggage
frisbee: frisbee
skis: skis, ski
snowboard: snowboard
sports ball: sports ball, ball, soccer ball, tennis ball
kite: kite
baseball bat: baseball bat, bat
baseball glove: baseball glove, glove, mitt
skateboard: skateboard
surfboard: surfboard, longboard, skimboard, shortboard, wakeboard
tennis racket: tennis racket, racket, racquet
bottle: bottle
wine glass: wine glass
cup: cup, mug
fork: fork
knife: knife, pocketknife
spoon: spoon
bowl: bowl
banana: banana
apple: apple
sandwich: sandwich, burger, sub, cheeseburger, hamburger
orange: orange
broccoli: broccoli
carrot: carrot
hot dog: hot dog
pizza: pizza
donut: donut, doughnut
cake: cake, cheesecake, cupcake, shortcake, coffeecake
chair: chair, seat, stool
couch: couch, sofa, recliner, futon, loveseat, settee
potted plant: potted plant, houseplant, plant
bed: bed
dining table: dining table, table, desk
toilet: toilet, urinal, commode, lavatory, potty, toilet seat
tv: tv, monitor, television
laptop: laptop, computer, notebook, netbook, macbook, laptop computer
mouse: mouse
remote: remote, remote control, controller
keyboard: keyboard
cell phone: cell phone, mobile phone, phone, cellphone, telephone, smartphone, iphone
microwave: microwave
oven: oven, stove
toaster: toaster
sink: sink
refrigerator: refrigerator, fridge, freezer
book: book, novel, paperback, hardcover
clock: clock
vase: vase
scissors: scissors
teddy bear: teddy bear, teddybear
hair drier: hair drier, hairdryer, hair dryer, blow dryer, blowdryer
toothbrush: toothbrush
"""
# Phrases that start with an object's name but mean something else: tracks are not a train.
_NOT_OBJECTS = ("train track", "train station")
# CHAIR's special case: before another object these words qualify it ("baby elephant",
# "passenger train") rather than name a person.
_QUALIFIERS = frozenset({"baby", "adult", "passenger"})
# Words allowed between a colour and its shape: "red small circle", "red two circles".
_SHAPE_MODIFIERS = frozenset(SIZE_WORDS) | frozenset(NUMBER_WORDS.values())
_IRREGULAR_PLURALS = {"person": "people", "child": "children", "knife": "knives",
                      "mouse": "mice", "goose": "geese", "ox": "oxen", "calf": "calves"}


class ObjectIndex(Protocol):
    """Which objects an image contains and which a caption mentions, named alike."""

    kind: ClassVar[Kind]

    def covers(self, image_id: int) -> bool:
        """Whether the instances files list this image (else there is nothing to compare)."""
        ...

    def objects_in_image(self, image_id: int) -> set[str]: ...

    def objects_in_caption(self, tokens: Sequence[str]) -> set[str]: ...

    def objects_in_caption_order(self, tokens: Sequence[str]) -> list[str]:
        """The objects a caption mentions, each once, in the order it first names them."""
        ...


@dataclass(frozen=True)
class _AnnotatedImages:
    images: Mapping[int, frozenset[str]]

    def covers(self, image_id: int) -> bool:
        return image_id in self.images

    def objects_in_image(self, image_id: int) -> set[str]:
        return set(self.images.get(image_id, ()))


@dataclass(frozen=True)
class CocoObjects(_AnnotatedImages):
    """COCO categories; a caption mentions one through any of its synonyms."""

    kind: ClassVar[Kind] = "coco"

    def objects_in_caption(self, tokens: Sequence[str]) -> set[str]:
        return coco_mentions(tokens)

    def objects_in_caption_order(self, tokens: Sequence[str]) -> list[str]:
        return coco_mentions_in_order(tokens)


@dataclass(frozen=True)
class ShapeObjects(_AnnotatedImages):
    """The built-in shapes set; objects are "colour shape" labels."""

    kind: ClassVar[Kind] = "shapes"

    def objects_in_caption(self, tokens: Sequence[str]) -> set[str]:
        return shape_mentions(tokens)

    def objects_in_caption_order(self, tokens: Sequence[str]) -> list[str]:
        return shape_mentions_in_order(tokens)


def coco_mentions(tokens: Sequence[str]) -> set[str]:
    """COCO categories named in a caption's tokens; two-word names win ("hot dog" is no dog)."""
    return set(coco_mentions_in_order(tokens))


def coco_mentions_in_order(tokens: Sequence[str]) -> list[str]:
    """coco_mentions, each category once, in the order the caption first names it."""
    phrases = _coco_phrases()
    # PTB keeps hyphenated words whole; "cell-phone" is "cell phone".
    words = [w for token in tokens for w in token.split("-") if w]
    found: list[str] = []
    i = 0
    while i < len(words):
        length, category = _phrase_at(words, i, phrases)
        qualifies_next = words[i] in _QUALIFIERS and _phrase_at(words, i + 1, phrases)[1]
        if category and not qualifies_next:
            found.append(category)
        i += length
    return list(dict.fromkeys(found))


def shape_mentions(tokens: Sequence[str]) -> set[str]:
    """ "colour shape" labels: a colour, at most one size or number word, then a shape word."""
    return set(shape_mentions_in_order(tokens))


def shape_mentions_in_order(tokens: Sequence[str]) -> list[str]:
    """shape_mentions, each label once, in the order the caption first names it."""
    found: list[str] = []
    for i, word in enumerate(tokens):
        if word not in COLOURS:
            continue
        shape = _shape_word(tokens[i + 1]) if i + 1 < len(tokens) else None
        if shape is None and i + 2 < len(tokens) and tokens[i + 1] in _SHAPE_MODIFIERS:
            shape = _shape_word(tokens[i + 2])
        if shape is not None:
            found.append(f"{word} {shape}")
    return list(dict.fromkeys(found))


def load_object_index(instances_files: Sequence[Path], kind: Kind | None = None) -> ObjectIndex:
    """The objects of every image in COCO instances files; `kind` is detected when None."""
    kind, labels = instance_labels(instances_files, kind)
    images = {image_id: frozenset(names) for image_id, names in labels.items()}
    return ShapeObjects(images) if kind == "shapes" else CocoObjects(images)


def _shape_word(word: str) -> str | None:
    singular = word[:-1] if word.endswith("s") else word
    return singular if singular in SHAPES else None


def _phrase_at(
    words: Sequence[str], i: int, phrases: Mapping[tuple[str, ...], str | None]
) -> tuple[int, str | None]:
    """(words consumed, category or None) for the longest known phrase starting at words[i]."""
    for length in (2, 1):
        phrase = tuple(words[i:i + length])
        if len(phrase) == length and phrase in phrases:
            return length, phrases[phrase]
    return 1, None


@lru_cache(maxsize=1)
def _coco_phrases() -> dict[tuple[str, ...], str | None]:
    phrases: dict[tuple[str, ...], str | None] = {}
    for line in _COCO_SYNONYMS.replace("\n  ", " ").strip().splitlines():
        category, synonyms = line.split(":")
        for synonym in synonyms.split(","):
            words = tuple(synonym.split())
            phrases[words] = category
            phrases[(*words[:-1], _plural(words[-1]))] = category
    for phrase in _NOT_OBJECTS:
        words = tuple(phrase.split())
        phrases[words] = phrases[(*words[:-1], _plural(words[-1]))] = None
    return phrases


def _plural(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith("man"):
        return word[:-3] + "men"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + "s"
