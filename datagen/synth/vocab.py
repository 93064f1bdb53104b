"""The open vocabulary: Visual Genome object names and predicates with checked Chinese,
WordNet synsets and a small hypernym table.

Why a table and not WordNet itself: no WordNet data ships on the package
registry this project can reach, and every name that reaches an instruction
must have a context-correct Chinese noun anyway (the COCO lexicon's reason).
So the vocabulary is the set of names we can say in both languages; an object
whose name is not here is still *present* (it blocks absent-object claims) but
is never asked about.

Hypernyms decide what may be called absent: "animal" is never absent when a dog
is present (dog.n.01 -> animal.n.01), and "dog" is never absent when only an
"animal" is annotated (it may be the dog). A present synset this table does not
know could hide anything, so then only concepts whose name shares no word with
the unknown object's name may be called absent (see :func:`blocked_by`).
"""

from __future__ import annotations

from dataclasses import dataclass

from datagen.synth.lexicon import LEXICON, Term, indefinite_article


@dataclass(frozen=True)
class Concept:
    name: str  # the VG name (lower case), the key
    synset: str
    en_plural: str
    zh: str
    zh_measure: str
    parent: str | None  # hypernym synset (a category), None at the top


# name: (synset, plural, zh, measure, parent synset)
_OPEN: dict[str, tuple[str, str, str, str, str | None]] = {
    # categories (tops of the small hierarchy)
    "animal": ("animal.n.01", "animals", "动物", "只", "organism.n.01"),
    "person": ("person.n.01", "people", "人", "个", "organism.n.01"),
    "plant": ("plant.n.02", "plants", "植物", "株", "organism.n.01"),
    "vehicle": ("vehicle.n.01", "vehicles", "交通工具", "辆", "artifact.n.01"),
    "furniture": ("furniture.n.01", "pieces of furniture", "家具", "件", "artifact.n.01"),
    "clothing": ("clothing.n.01", "clothes", "衣物", "件", "artifact.n.01"),
    "food": ("food.n.02", "foods", "食物", "份", None),
    "container": ("container.n.01", "containers", "容器", "个", "artifact.n.01"),
    "structure": ("structure.n.01", "structures", "建筑物", "座", "artifact.n.01"),
    "body part": ("body_part.n.01", "body parts", "身体部位", "个", None),
    "device": ("device.n.01", "devices", "设备", "台", "artifact.n.01"),
    # people
    "man": ("man.n.01", "men", "男人", "个", "person.n.01"),
    "woman": ("woman.n.01", "women", "女人", "个", "person.n.01"),
    "boy": ("male_child.n.01", "boys", "男孩", "个", "person.n.01"),
    "girl": ("girl.n.01", "girls", "女孩", "个", "person.n.01"),
    "child": ("child.n.01", "children", "孩子", "个", "person.n.01"),
    "astronaut": ("astronaut.n.01", "astronauts", "宇航员", "名", "person.n.01"),
    # animals
    "kitten": ("kitten.n.01", "kittens", "小猫", "只", "cat.n.01"),
    "puppy": ("puppy.n.01", "puppies", "小狗", "只", "dog.n.01"),
    # clothing and body
    "shirt": ("shirt.n.01", "shirts", "衬衫", "件", "clothing.n.01"),
    "jacket": ("jacket.n.01", "jackets", "夹克", "件", "clothing.n.01"),
    "coat": ("coat.n.01", "coats", "外套", "件", "clothing.n.01"),
    "hat": ("hat.n.01", "hats", "帽子", "顶", "clothing.n.01"),
    "helmet": ("helmet.n.02", "helmets", "头盔", "顶", "clothing.n.01"),
    "glove": ("glove.n.02", "gloves", "手套", "只", "clothing.n.01"),
    "pants": ("trouser.n.01", "pants", "裤子", "条", "clothing.n.01"),
    "shoe": ("shoe.n.01", "shoes", "鞋", "只", "clothing.n.01"),
    "suit": ("suit.n.01", "suits", "套装", "套", "clothing.n.01"),
    "hair": ("hair.n.01", "hair", "头发", "头", "body_part.n.01"),
    "head": ("head.n.01", "heads", "头", "个", "body_part.n.01"),
    "hand": ("hand.n.01", "hands", "手", "只", "body_part.n.01"),
    "face": ("face.n.01", "faces", "脸", "张", "body_part.n.01"),
    "eye": ("eye.n.01", "eyes", "眼睛", "只", "body_part.n.01"),
    "nose": ("nose.n.01", "noses", "鼻子", "个", "body_part.n.01"),
    "ear": ("ear.n.01", "ears", "耳朵", "只", "body_part.n.01"),
    "whisker": ("whisker.n.02", "whiskers", "胡须", "根", "body_part.n.01"),
    # things
    "table": ("table.n.02", "tables", "桌子", "张", "furniture.n.01"),
    "shelf": ("shelf.n.01", "shelves", "架子", "个", "furniture.n.01"),
    "lamp": ("lamp.n.02", "lamps", "台灯", "盏", "device.n.01"),
    "plate": ("plate.n.04", "plates", "盘子", "个", "container.n.01"),
    "saucer": ("saucer.n.02", "saucers", "茶碟", "个", "container.n.01"),
    "box": ("box.n.01", "boxes", "盒子", "个", "container.n.01"),
    "bag": ("bag.n.01", "bags", "包", "个", "container.n.01"),
    "basket": ("basket.n.01", "baskets", "篮子", "个", "container.n.01"),
    "camera": ("camera.n.01", "cameras", "摄像机", "台", "device.n.01"),
    "tripod": ("tripod.n.01", "tripods", "三脚架", "个", "device.n.01"),
    "coin": ("coin.n.01", "coins", "硬币", "枚", "artifact.n.01"),
    "flag": ("flag.n.01", "flags", "旗帜", "面", "artifact.n.01"),
    "sign": ("sign.n.02", "signs", "标牌", "块", "artifact.n.01"),
    "pole": ("pole.n.01", "poles", "杆子", "根", "artifact.n.01"),
    "wheel": ("wheel.n.01", "wheels", "轮子", "个", "artifact.n.01"),
    "window": ("window.n.01", "windows", "窗户", "扇", "artifact.n.01"),
    "door": ("door.n.01", "doors", "门", "扇", "artifact.n.01"),
    "fence": ("fence.n.01", "fences", "栅栏", "道", "structure.n.01"),
    "building": ("building.n.01", "buildings", "建筑", "座", "structure.n.01"),
    "tower": ("tower.n.01", "towers", "塔", "座", "structure.n.01"),
    "pagoda": ("pagoda.n.01", "pagodas", "宝塔", "座", "structure.n.01"),
    "bridge": ("bridge.n.01", "bridges", "桥", "座", "structure.n.01"),
    "wall": ("wall.n.01", "walls", "墙", "面", "structure.n.01"),
    "rocket": ("rocket.n.01", "rockets", "火箭", "枚", "vehicle.n.01"),
    "tank": ("tank.n.02", "tanks", "油箱", "个", "container.n.01"),
    "engine": ("engine.n.01", "engines", "发动机", "台", "device.n.01"),
    "seat": ("seat.n.03", "seats", "座椅", "个", "furniture.n.01"),
    # nature and scenery
    "tree": ("tree.n.01", "trees", "树", "棵", "plant.n.02"),
    "grass": ("grass.n.01", "grass", "草", "片", "plant.n.02"),
    "flower": ("flower.n.01", "flowers", "花", "朵", "plant.n.02"),
    "leaf": ("leaf.n.01", "leaves", "叶子", "片", "plant.n.02"),
    "sky": ("sky.n.01", "skies", "天空", "片", None),
    "cloud": ("cloud.n.02", "clouds", "云", "朵", None),
    "water": ("water.n.01", "water", "水", "片", None),
    "lake": ("lake.n.01", "lakes", "湖", "个", None),
    "mountain": ("mountain.n.01", "mountains", "山", "座", None),
    "rock": ("rock.n.01", "rocks", "岩石", "块", None),
    "road": ("road.n.01", "roads", "道路", "条", "structure.n.01"),
    "floor": ("floor.n.01", "floors", "地板", "块", "structure.n.01"),
    "ground": ("ground.n.01", "ground", "地面", "片", None),
    "snow": ("snow.n.02", "snow", "雪", "片", None),
    "sand": ("sand.n.01", "sand", "沙子", "片", None),
    "light": ("light.n.02", "lights", "灯", "盏", "device.n.01"),
    "star": ("star.n.01", "stars", "星星", "颗", None),
    "galaxy": ("galaxy.n.01", "galaxies", "星系", "个", None),
    "brick": ("brick.n.01", "bricks", "砖块", "块", "artifact.n.01"),
    "crema": ("crema.n.01", "crema", "咖啡油脂", "层", "food.n.02"),
    "coffee": ("coffee.n.01", "coffee", "咖啡", "杯", "food.n.02"),
}

# COCO categories: synset and the category they fall under.
_COCO_SYNSETS: dict[str, tuple[str, str | None]] = {
    "person": ("person.n.01", "organism.n.01"), "bicycle": ("bicycle.n.01", "vehicle.n.01"),
    "car": ("car.n.01", "vehicle.n.01"), "motorcycle": ("motorcycle.n.01", "vehicle.n.01"),
    "airplane": ("airplane.n.01", "vehicle.n.01"), "bus": ("bus.n.01", "vehicle.n.01"),
    "train": ("train.n.01", "vehicle.n.01"), "truck": ("truck.n.01", "vehicle.n.01"),
    "boat": ("boat.n.01", "vehicle.n.01"), "traffic light": ("traffic_light.n.01", "device.n.01"),
    "fire hydrant": ("fireplug.n.01", "artifact.n.01"), "stop sign": ("street_sign.n.01", "sign.n.02"),
    "parking meter": ("parking_meter.n.01", "device.n.01"), "bench": ("bench.n.01", "furniture.n.01"),
    "bird": ("bird.n.01", "animal.n.01"), "cat": ("cat.n.01", "animal.n.01"), "dog": ("dog.n.01", "animal.n.01"),
    "horse": ("horse.n.01", "animal.n.01"), "sheep": ("sheep.n.01", "animal.n.01"), "cow": ("cow.n.01", "animal.n.01"),
    "elephant": ("elephant.n.01", "animal.n.01"), "bear": ("bear.n.01", "animal.n.01"),
    "zebra": ("zebra.n.01", "animal.n.01"), "giraffe": ("giraffe.n.01", "animal.n.01"),
    "backpack": ("backpack.n.01", "bag.n.01"), "umbrella": ("umbrella.n.01", "artifact.n.01"),
    "handbag": ("bag.n.04", "bag.n.01"), "tie": ("necktie.n.01", "clothing.n.01"),
    "suitcase": ("bag.n.06", "bag.n.01"), "frisbee": ("frisbee.n.01", "artifact.n.01"),
    "skis": ("ski.n.01", "artifact.n.01"), "snowboard": ("snowboard.n.01", "artifact.n.01"),
    "sports ball": ("ball.n.01", "artifact.n.01"), "kite": ("kite.n.03", "artifact.n.01"),
    "baseball bat": ("baseball_bat.n.01", "artifact.n.01"), "baseball glove": ("baseball_glove.n.01", "glove.n.02"),
    "skateboard": ("skateboard.n.01", "artifact.n.01"), "surfboard": ("surfboard.n.01", "artifact.n.01"),
    "tennis racket": ("tennis_racket.n.01", "artifact.n.01"), "bottle": ("bottle.n.01", "container.n.01"),
    "wine glass": ("wineglass.n.01", "container.n.01"), "cup": ("cup.n.01", "container.n.01"),
    "fork": ("fork.n.01", "artifact.n.01"), "knife": ("knife.n.01", "artifact.n.01"),
    "spoon": ("spoon.n.01", "artifact.n.01"), "bowl": ("bowl.n.01", "container.n.01"),
    "banana": ("banana.n.02", "food.n.02"), "apple": ("apple.n.01", "food.n.02"),
    "sandwich": ("sandwich.n.01", "food.n.02"), "orange": ("orange.n.01", "food.n.02"),
    "broccoli": ("broccoli.n.02", "food.n.02"), "carrot": ("carrot.n.03", "food.n.02"),
    "hot dog": ("hotdog.n.02", "food.n.02"), "pizza": ("pizza.n.01", "food.n.02"),
    "donut": ("doughnut.n.02", "food.n.02"), "cake": ("cake.n.03", "food.n.02"),
    "chair": ("chair.n.01", "seat.n.03"), "couch": ("sofa.n.01", "seat.n.03"),
    "potted plant": ("pot_plant.n.01", "plant.n.02"), "bed": ("bed.n.01", "furniture.n.01"),
    "dining table": ("dining_table.n.01", "table.n.02"), "toilet": ("toilet.n.02", "artifact.n.01"),
    "tv": ("television_receiver.n.01", "device.n.01"), "laptop": ("laptop.n.01", "device.n.01"),
    "mouse": ("mouse.n.04", "device.n.01"), "remote": ("remote_control.n.01", "device.n.01"),
    "keyboard": ("computer_keyboard.n.01", "device.n.01"), "cell phone": ("cellular_telephone.n.01", "device.n.01"),
    "microwave": ("microwave.n.02", "device.n.01"), "oven": ("oven.n.01", "device.n.01"),
    "toaster": ("toaster.n.02", "device.n.01"), "sink": ("sink.n.01", "artifact.n.01"),
    "refrigerator": ("electric_refrigerator.n.01", "device.n.01"), "book": ("book.n.02", "artifact.n.01"),
    "clock": ("clock.n.01", "device.n.01"), "vase": ("vase.n.01", "container.n.01"),
    "scissors": ("scissors.n.01", "artifact.n.01"), "teddy bear": ("teddy.n.01", "artifact.n.01"),
    "hair drier": ("hand_blower.n.01", "device.n.01"), "toothbrush": ("toothbrush.n.01", "artifact.n.01"),
}

CONCEPTS: dict[str, Concept] = {}
for _name, (_syn, _pl, _zh, _m, _par) in _OPEN.items():
    CONCEPTS[_name] = Concept(_name, _syn, _pl, _zh, _m, _par)
for _name, (_syn, _par) in _COCO_SYNSETS.items():
    _t = LEXICON[_name]
    CONCEPTS.setdefault(_name, Concept(_name, _syn, _t.en_plural, _t.zh, _t.zh_measure, _par))
# Said without an article ("green grass", not "a green grass"); never counted or quantified.
MASS_NOUNS = frozenset({"grass", "water", "snow", "sand", "hair", "ground", "coffee", "crema", "sky", "food", "clothing"})
# VG's own spellings of COCO names
ALIASES = {"motorbike": "motorcycle", "bike": "bicycle", "cellphone": "cell phone", "phone": "cell phone",
           "television": "tv", "sofa": "couch", "doughnut": "donut", "plane": "airplane", "ball": "sports ball",
           "racket": "tennis racket", "mug": "cup", "people": "person", "kid": "child", "trousers": "pants"}

BY_SYNSET: dict[str, Concept] = {}
for _c in CONCEPTS.values():
    BY_SYNSET.setdefault(_c.synset, _c)
_PARENT: dict[str, str | None] = {c.synset: c.parent for c in CONCEPTS.values()}
_PARENT.update({"organism.n.01": None, "artifact.n.01": None})
_CHILDREN: dict[str, set[str]] = {}
for _s, _p in _PARENT.items():
    if _p:
        _CHILDREN.setdefault(_p, set()).add(_s)


def concept(name: str | None) -> Concept | None:
    """The concept a VG name (or COCO category name) stands for, or None when we cannot say it in both languages."""
    if not name:
        return None
    name = " ".join(name.lower().split())
    return CONCEPTS.get(ALIASES.get(name, name))


def ancestors(synset: str) -> list[str]:
    out, s = [], _PARENT.get(synset)
    while s and s not in out:
        out.append(s)
        s = _PARENT.get(s)
    return out


def known(synset: str) -> bool:
    return synset in _PARENT


def related(a: str, b: str) -> bool:
    """Same synset, or one is a hypernym of the other."""
    return a == b or a in ancestors(b) or b in ancestors(a)


def is_leaf(synset: str) -> bool:
    return not _CHILDREN.get(synset)


def object_synsets(obj: dict) -> list[str]:
    """An annotated object's synsets: its own (VG), else its concept's (COCO name)."""
    syns = [s for s in (obj.get("synsets") or []) if s]
    if not syns:
        c = concept(obj.get("label"))
        syns = [c.synset] if c else []
    return syns


def blocked_by(candidate: Concept, present: list[dict]) -> bool:
    """True when ``candidate`` must not be called absent given the present objects.

    Related synsets block (hypernym or hyponym, either way). A present object
    with no synset we know blocks any candidate whose name shares a word with
    its name ("police dog" blocks "dog"), and blocks every category (a
    non-leaf concept): an unknown thing may be an animal."""
    cand_words = set(candidate.name.split())
    for o in present:
        syns = object_synsets(o)
        if any(known(s) and related(candidate.synset, s) for s in syns):
            return True
        if not any(known(s) for s in syns):
            name_words = set(str(o.get("label") or "").lower().split())
            if cand_words & name_words or not is_leaf(candidate.synset):
                return True
    return False


def absent_candidates(present: list[dict]) -> list[str]:
    """Vocabulary names that may be called absent: leaves only (a category is a weak negative), never a
    body part (an ear is part of a person or animal whether annotated or not), none blocked."""
    return sorted(n for n, c in CONCEPTS.items()
                  if is_leaf(c.synset) and "body_part.n.01" not in ancestors(c.synset) and not blocked_by(c, present))


def open_term(name: str) -> Term:
    """A lexicon-shaped entry for a vocabulary name (COCO names give their checked lexicon entry)."""
    if name in LEXICON:
        return LEXICON[name]
    c = CONCEPTS[name]
    return Term(id=0, en=c.name, en_plural=c.en_plural, en_article=indefinite_article(c.name), zh=c.zh,
                zh_measure=c.zh_measure, zh_avoid=(), supercategory=c.parent or "")


# ------------------------------------------------------------------------ predicates

# VG predicate (lower case) -> Chinese clause with {s} subject and {o} object.
# Only predicates with a clear Chinese rendering are asked about.
PREDICATES: dict[str, str] = {
    "on": "{s}在{o}上", "sitting on": "{s}坐在{o}上", "standing on": "{s}站在{o}上", "parked on": "{s}停在{o}上",
    "in": "{s}在{o}里", "inside": "{s}在{o}里面", "under": "{s}在{o}下面", "above": "{s}在{o}上方",
    "below": "{s}在{o}下方", "behind": "{s}在{o}后面", "in front of": "{s}在{o}前面", "next to": "{s}在{o}旁边",
    "beside": "{s}在{o}旁边", "near": "{s}在{o}附近", "riding": "{s}骑着{o}", "holding": "{s}拿着{o}",
    "wearing": "{s}穿戴着{o}", "carrying": "{s}带着{o}", "looking at": "{s}看着{o}", "eating": "{s}在吃{o}",
    "hanging on": "{s}挂在{o}上", "leaning on": "{s}靠在{o}上", "covering": "{s}盖着{o}",
    "pulling": "{s}拉着{o}", "pushing": "{s}推着{o}", "using": "{s}在用{o}", "filled with": "{s}装满了{o}",
}
# Predicate swaps that are certainly false when the original triple is true.
CONTRAST: dict[str, str] = {
    "on": "under", "under": "on", "above": "below", "below": "above", "behind": "in front of",
    "in front of": "behind", "sitting on": "under", "standing on": "under", "parked on": "under",
}
# Predicates whose subject and object cannot trade places ("the horse is riding the man" is false).
ASYMMETRIC = frozenset({"on", "sitting on", "standing on", "parked on", "in", "inside", "under", "above", "below",
                        "behind", "in front of", "riding", "holding", "wearing", "carrying", "eating",
                        "hanging on", "covering", "filled with", "pulling", "pushing", "using"})
# Every predicate reads after "is" in English ("the man is riding the horse", "the cup is on the table");
# "has" would not, so it is not in the table.


def predicate(p: str | None) -> str | None:
    """A VG predicate normalised (lower case, single spaces), or None when we cannot ask about it."""
    if not p:
        return None
    p = " ".join(p.lower().split())
    return p if p in PREDICATES else None
