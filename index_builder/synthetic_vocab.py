"""The synthetic shop's world: category tree, product vocabularies, brands and complements.

Fixed data, independent of the seed, so the same leaf always speaks the same words: items of one
leaf share nouns, attribute values and feature phrases, which is what makes text similarity (and
a query such as "wireless earbuds noise cancelling") meaningful on generated data.

Each leaf is a :class:`Leaf`; :func:`shop_vocabulary` builds them all into a :class:`Vocabulary`
with brands per top category and the complement relation between leaves (a phone, then its case).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

__all__ = ["Leaf", "Vocabulary", "shop_vocabulary", "BRANDS_PER_TOP", "MAX_ATTRIBUTES"]

#: Number of brands in each top category.
BRANDS_PER_TOP = 8
#: Attribute dimensions per leaf at most (colour, size, capacity ...).
MAX_ATTRIBUTES = 3

_POOLS = {
    "color": "black,white,silver,blue,red,green,grey,pink,navy,beige",
    "size": "XS,S,M,L,XL,XXL",
    "shoe": "38,39,40,41,42,43,44,45",
    "fabric": "cotton,linen,wool,polyester,denim,organic cotton",
    "pack": "1 pack,2 pack,3 pack,6 pack",
    "skin": "dry skin,oily skin,sensitive skin,all skin types",
    "age": "ages 3+,ages 6+,ages 8+,ages 12+",
    "cover": "hardcover,paperback,large print",
    "dog": "small breed,medium breed,large breed,puppy,senior",
    "cat": "kitten,adult cat,senior cat,indoor cat",
}

# (category path, nouns (first is canonical), median price, attributes "dim=a,b;dim2=@pool", features)
_LEAVES: tuple[tuple[str, str, float, str, str], ...] = (
    ("Electronics > Phones > Smartphones", "smartphone,mobile phone,cell phone", 480,
     "storage=64GB,128GB,256GB,512GB;color=@color;screen=6.1 inch,6.4 inch,6.7 inch",
     "5G,dual SIM,fast charging,OLED display,triple camera,water resistant,face unlock"),
    ("Electronics > Phones > Phone Cases", "phone case,protective case,phone cover", 18,
     "material=silicone,leather,clear TPU,carbon fiber;color=@color",
     "shockproof,slim fit,MagSafe compatible,card holder,raised edges,drop tested"),
    ("Electronics > Phones > Screen Protectors", "screen protector,tempered glass,screen film", 10,
     "pack=@pack;finish=matte,glossy,privacy",
     "9H hardness,bubble free,case friendly,anti fingerprint,easy install"),
    ("Electronics > Phones > Chargers", "phone charger,USB-C charger,wall charger", 22,
     "power=20W,30W,45W,65W;ports=1 port,2 ports,3 ports",
     "fast charging,GaN,foldable plug,cable included,travel friendly"),
    ("Electronics > Audio > Earbuds", "wireless earbuds,earbuds,in-ear headphones", 85,
     "color=@color;battery=20h battery,30h battery,40h battery",
     "noise cancelling,bluetooth 5.3,waterproof,wireless charging case,transparency mode,low latency"),
    ("Electronics > Audio > Headphones", "headphones,over-ear headphones,wireless headphones", 140,
     "color=@color;fit=over-ear,on-ear",
     "noise cancelling,bluetooth,foldable,hi-res audio,long battery life,built-in microphone"),
    ("Electronics > Audio > Bluetooth Speakers", "bluetooth speaker,portable speaker,wireless speaker", 70,
     "color=@color;power=10W,20W,40W",
     "waterproof,deep bass,party mode,long battery life,outdoor,stereo pairing"),
    ("Electronics > Cameras > Digital Cameras", "digital camera,mirrorless camera,camera", 650,
     "resolution=20MP,24MP,33MP,45MP;kit=body only,with kit lens",
     "4K video,image stabilization,weather sealed,wifi,flip screen,fast autofocus"),
    ("Electronics > Cameras > Camera Lenses", "camera lens,zoom lens,prime lens", 380,
     "focal=35mm,50mm,85mm,24-70mm,70-200mm;aperture=f/1.8,f/2.8,f/4",
     "image stabilization,weather sealed,fast autofocus,macro,portrait"),
    ("Electronics > Cameras > Memory Cards", "memory card,SD card,microSD card", 25,
     "capacity=32GB,64GB,128GB,256GB;speed=UHS-I,UHS-II,V30,V60",
     "4K video,fast transfer,waterproof,adapter included"),
    ("Electronics > Cameras > Tripods", "tripod,camera tripod,travel tripod", 60,
     "material=aluminium,carbon fiber;height=120cm,150cm,170cm",
     "ball head,lightweight,quick release,phone mount,compact"),
    ("Electronics > Wearables > Smartwatches", "smartwatch,fitness watch,smart watch", 220,
     "color=@color;case=40mm,42mm,44mm,46mm",
     "heart rate,GPS,sleep tracking,waterproof,AMOLED display,long battery life"),
    ("Electronics > Wearables > Watch Bands", "watch band,watch strap,replacement band", 15,
     "material=silicone,leather,nylon,stainless steel;color=@color",
     "quick release,breathable,adjustable,sport loop"),
    ("Computers > Portable > Laptops", "laptop,notebook,ultrabook", 900,
     "memory=8GB RAM,16GB RAM,32GB RAM;storage=256GB SSD,512GB SSD,1TB SSD;screen=13 inch,14 inch,16 inch",
     "backlit keyboard,long battery life,touchscreen,lightweight,fingerprint reader,dedicated graphics"),
    ("Computers > Portable > Tablets", "tablet,android tablet,drawing tablet", 330,
     "storage=64GB,128GB,256GB;screen=8 inch,10 inch,11 inch,12 inch",
     "stylus support,wifi,LTE,long battery life,kids mode"),
    ("Computers > Portable > Laptop Bags", "laptop bag,laptop backpack,laptop sleeve", 40,
     "size=13 inch,15 inch,17 inch;color=@color",
     "water resistant,padded,anti theft,USB charging port,lightweight"),
    ("Computers > Accessories > Mice", "computer mouse,wireless mouse,gaming mouse", 30,
     "color=@color;dpi=1600 DPI,4000 DPI,16000 DPI",
     "ergonomic,silent click,rechargeable,bluetooth,RGB lighting"),
    ("Computers > Accessories > Keyboards", "keyboard,mechanical keyboard,wireless keyboard", 65,
     "layout=full size,tenkeyless,compact 60%;switch=red switches,brown switches,blue switches",
     "RGB lighting,hot swappable,bluetooth,backlit,quiet typing"),
    ("Computers > Accessories > Monitors", "monitor,computer monitor,gaming monitor", 260,
     "screen=24 inch,27 inch,32 inch;resolution=1080p,1440p,4K",
     "144Hz,IPS panel,HDR,USB-C,height adjustable,eye care"),
    ("Computers > Accessories > USB Hubs", "USB hub,USB-C hub,docking station", 35,
     "ports=4 ports,7 ports,10 ports",
     "HDMI,SD card reader,power delivery,ethernet,aluminium"),
    ("Computers > Storage > External Drives", "external hard drive,portable SSD,external drive", 95,
     "capacity=500GB,1TB,2TB,4TB;interface=USB 3.2,USB-C,Thunderbolt",
     "shock resistant,encryption,backup software,compact"),
    ("Computers > Storage > USB Flash Drives", "USB flash drive,USB stick,thumb drive", 12,
     "capacity=32GB,64GB,128GB,256GB;pack=@pack",
     "USB 3.0,keychain,metal casing,dual connector"),
    ("Home & Kitchen > Coffee & Tea > Coffee Makers", "coffee maker,espresso machine,coffee machine", 150,
     "type=drip,espresso,pod,french press;color=@color",
     "programmable,milk frother,thermal carafe,built-in grinder,auto shut-off"),
    ("Home & Kitchen > Coffee & Tea > Coffee Beans", "coffee beans,whole bean coffee,ground coffee", 16,
     "roast=light roast,medium roast,dark roast;weight=250g,500g,1kg",
     "single origin,organic,fair trade,arabica,decaf"),
    ("Home & Kitchen > Coffee & Tea > Coffee Filters", "coffee filters,paper filters,reusable filter", 7,
     "size=size 2,size 4,cone;pack=@pack",
     "unbleached,compostable,stainless steel mesh"),
    ("Home & Kitchen > Coffee & Tea > Tea Kettles", "electric kettle,tea kettle,kettle", 45,
     "capacity=1 litre,1.5 litre,1.7 litre;color=@color",
     "temperature control,keep warm,glass,stainless steel,fast boil"),
    ("Home & Kitchen > Cookware > Frying Pans", "frying pan,skillet,non-stick pan", 40,
     "diameter=20cm,24cm,28cm,32cm;material=cast iron,stainless steel,ceramic,aluminium",
     "non-stick,induction ready,oven safe,dishwasher safe,PFOA free"),
    ("Home & Kitchen > Cookware > Saucepans", "saucepan,cooking pot,stock pot", 45,
     "capacity=1.5 litre,2 litre,3 litre,5 litre;material=stainless steel,copper,enamel",
     "glass lid,induction ready,dishwasher safe,pouring spout"),
    ("Home & Kitchen > Cookware > Knife Sets", "knife set,kitchen knives,chef knife", 90,
     "pieces=3 piece,6 piece,8 piece,12 piece;steel=german steel,japanese steel,damascus",
     "knife block,razor sharp,ergonomic handle,full tang"),
    ("Home & Kitchen > Cookware > Cutting Boards", "cutting board,chopping board,butcher block", 25,
     "material=bamboo,walnut,plastic,acacia;size=small,medium,large",
     "juice groove,non-slip,reversible,dishwasher safe"),
    ("Home & Kitchen > Bedding > Duvet Covers", "duvet cover,comforter cover,bedding set", 55,
     "size=single,double,queen,king;fabric=@fabric",
     "zipper closure,pillowcases included,breathable,wrinkle resistant"),
    ("Home & Kitchen > Bedding > Pillows", "pillow,bed pillow,memory foam pillow", 35,
     "firmness=soft,medium,firm;pack=@pack",
     "cooling,hypoallergenic,washable cover,side sleeper"),
    ("Home & Kitchen > Bedding > Bed Sheets", "bed sheets,fitted sheet,sheet set", 40,
     "size=single,double,queen,king;fabric=@fabric",
     "deep pocket,breathable,400 thread count,soft touch"),
    ("Clothing > Men > T-Shirts", "t-shirt,tee,crew neck shirt", 20,
     "size=@size;color=@color;fabric=@fabric",
     "regular fit,slim fit,short sleeve,crew neck,v-neck"),
    ("Clothing > Men > Jeans", "jeans,denim jeans,pants", 55,
     "waist=30W,32W,34W,36W;fit=slim fit,straight fit,relaxed fit;color=blue,black,grey",
     "stretch,classic five pocket,distressed,high rise"),
    ("Clothing > Men > Jackets", "jacket,winter jacket,rain jacket", 110,
     "size=@size;color=@color",
     "waterproof,hooded,insulated,packable,windproof"),
    ("Clothing > Women > Dresses", "dress,summer dress,maxi dress", 50,
     "size=@size;color=@color;fabric=@fabric",
     "floral print,v-neck,sleeveless,midi length,wrap style"),
    ("Clothing > Women > Blouses", "blouse,shirt,top", 35,
     "size=@size;color=@color",
     "button down,long sleeve,chiffon,loose fit,office wear"),
    ("Clothing > Women > Leggings", "leggings,yoga pants,tights", 28,
     "size=@size;color=@color",
     "high waist,squat proof,pockets,stretch,moisture wicking"),
    ("Clothing > Accessories > Socks", "socks,sport socks,ankle socks", 12,
     "size=@size;pack=@pack",
     "cushioned,breathable,moisture wicking,merino wool,no show"),
    ("Clothing > Accessories > Belts", "belt,leather belt,dress belt", 25,
     "size=@size;color=black,brown,tan",
     "genuine leather,reversible,automatic buckle"),
    ("Shoes > Athletic > Running Shoes", "running shoes,trainers,road running shoes", 110,
     "size=@shoe;color=@color",
     "lightweight,breathable mesh,cushioned,carbon plate,wide fit,reflective"),
    ("Shoes > Athletic > Trail Shoes", "trail running shoes,trail shoes,hiking shoes", 125,
     "size=@shoe;color=@color",
     "waterproof,grippy outsole,rock plate,gore-tex,ankle support"),
    ("Shoes > Casual > Sneakers", "sneakers,casual shoes,canvas shoes", 70,
     "size=@shoe;color=@color",
     "leather,slip on,platform,memory foam insole,retro"),
    ("Shoes > Casual > Boots", "boots,ankle boots,chelsea boots", 120,
     "size=@shoe;color=black,brown,tan",
     "waterproof,leather,lace up,lined,non-slip sole"),
    ("Shoes > Care > Shoe Insoles", "shoe insoles,insoles,arch support insoles", 15,
     "size=@shoe;material=gel,memory foam,cork",
     "arch support,odor control,shock absorbing,trim to fit"),
    ("Shoes > Care > Shoe Cleaners", "shoe cleaner,shoe cleaning kit,sneaker cleaner", 12,
     "volume=100ml,250ml;kit=spray,kit with brush",
     "waterproofing,stain remover,suede safe,leather care"),
    ("Sports & Outdoors > Fitness > Yoga Mats", "yoga mat,exercise mat,fitness mat", 30,
     "thickness=4mm,6mm,8mm,10mm;color=@color",
     "non-slip,eco friendly,carrying strap,alignment lines,extra wide"),
    ("Sports & Outdoors > Fitness > Dumbbells", "dumbbells,adjustable dumbbells,hand weights", 75,
     "weight=2kg,5kg,10kg,20kg,24kg;material=cast iron,neoprene,rubber coated",
     "adjustable,pair,hex design,stand included"),
    ("Sports & Outdoors > Fitness > Resistance Bands", "resistance bands,exercise bands,loop bands", 18,
     "level=light,medium,heavy,set of 5",
     "door anchor,handles included,latex free,carry bag"),
    ("Sports & Outdoors > Camping > Tents", "tent,camping tent,backpacking tent", 160,
     "capacity=1 person,2 person,4 person,6 person;season=3 season,4 season",
     "waterproof,easy setup,lightweight,vestibule,double wall"),
    ("Sports & Outdoors > Camping > Sleeping Bags", "sleeping bag,mummy sleeping bag,camping sleeping bag", 70,
     "rating=0C,-5C,-10C,5C;fill=down,synthetic",
     "compression sack,lightweight,water resistant,zip together"),
    ("Sports & Outdoors > Camping > Camping Stoves", "camping stove,backpacking stove,gas stove", 45,
     "fuel=butane,propane,multi fuel;burners=1 burner,2 burners",
     "piezo ignition,windproof,compact,simmer control"),
    ("Sports & Outdoors > Camping > Headlamps", "headlamp,head torch,LED headlamp", 25,
     "brightness=200 lumens,400 lumens,1000 lumens;power=AAA batteries,rechargeable",
     "red light,waterproof,motion sensor,lightweight"),
    ("Sports & Outdoors > Cycling > Bikes", "bike,bicycle,mountain bike", 600,
     "frame=S,M,L,XL;type=road,mountain,hybrid,electric",
     "disc brakes,21 speed,aluminium frame,suspension fork,lightweight"),
    ("Sports & Outdoors > Cycling > Bike Helmets", "bike helmet,cycling helmet,bicycle helmet", 60,
     "size=S,M,L;color=@color",
     "MIPS,ventilated,adjustable fit,LED rear light,lightweight"),
    ("Sports & Outdoors > Cycling > Bike Lights", "bike lights,bicycle light set,bike headlight", 28,
     "brightness=400 lumens,800 lumens,1200 lumens",
     "USB rechargeable,waterproof,tail light included,quick mount"),
    ("Beauty > Skin Care > Moisturizers", "moisturizer,face cream,day cream", 24,
     "skin=@skin;volume=50ml,100ml",
     "hyaluronic acid,SPF 30,fragrance free,vitamin C,non-greasy"),
    ("Beauty > Skin Care > Cleansers", "face cleanser,face wash,cleansing gel", 15,
     "skin=@skin;volume=150ml,250ml",
     "gentle,foaming,salicylic acid,fragrance free,vegan"),
    ("Beauty > Skin Care > Sunscreen", "sunscreen,sun cream,sunblock", 16,
     "spf=SPF 30,SPF 50,SPF 50+;skin=@skin",
     "water resistant,reef safe,mineral,non-greasy,broad spectrum"),
    ("Beauty > Hair Care > Shampoo", "shampoo,hair shampoo,clarifying shampoo", 12,
     "hair=dry hair,oily hair,curly hair,colored hair;volume=250ml,500ml",
     "sulfate free,moisturizing,anti dandruff,argan oil,volumizing"),
    ("Beauty > Hair Care > Conditioner", "conditioner,hair conditioner,leave-in conditioner", 12,
     "hair=dry hair,oily hair,curly hair,colored hair;volume=250ml,500ml",
     "sulfate free,moisturizing,detangling,argan oil,silicone free"),
    ("Beauty > Hair Care > Hair Dryers", "hair dryer,blow dryer,ionic hair dryer", 60,
     "power=1800W,2000W,2400W;color=@color",
     "ionic,diffuser included,cool shot,foldable,fast drying"),
    ("Toys & Games > Kids > Building Blocks", "building blocks,building set,construction toy", 40,
     "pieces=100 pieces,250 pieces,500 pieces,1000 pieces;age=@age",
     "compatible bricks,storage box,educational,STEM"),
    ("Toys & Games > Kids > Toy Cars", "toy car,remote control car,race car toy", 30,
     "scale=1:16,1:24,1:64;age=@age",
     "remote control,rechargeable,off road,die cast,light and sound"),
    ("Toys & Games > Games > Board Games", "board game,strategy game,family game", 35,
     "players=2 players,2-4 players,2-6 players;age=@age",
     "cooperative,party game,strategy,expansion,quick play"),
    ("Toys & Games > Games > Jigsaw Puzzles", "jigsaw puzzle,puzzle,picture puzzle", 18,
     "pieces=500 pieces,1000 pieces,1500 pieces,2000 pieces;theme=landscape,animals,art,map",
     "thick pieces,poster included,no dust,matte finish"),
    ("Toys & Games > Games > Card Games", "card game,playing cards,deck game", 15,
     "players=2 players,2-4 players,2-8 players;age=@age",
     "party game,travel size,quick play,expansion"),
    ("Books > Fiction > Mystery Novels", "mystery novel,crime thriller,detective novel", 14,
     "format=@cover;series=standalone,book 1,book 2,book 3",
     "bestseller,award winning,page turner,twist ending"),
    ("Books > Fiction > Science Fiction", "science fiction novel,sci-fi book,space opera", 15,
     "format=@cover;series=standalone,book 1,book 2,book 3",
     "bestseller,award winning,dystopian,first contact,time travel"),
    ("Books > Fiction > Fantasy Novels", "fantasy novel,epic fantasy,fantasy book", 16,
     "format=@cover;series=standalone,book 1,book 2,book 3",
     "bestseller,dragons,magic system,epic quest,illustrated map"),
    ("Books > Nonfiction > Cookbooks", "cookbook,recipe book,cooking book", 25,
     "format=@cover;cuisine=italian,vegan,baking,asian,mediterranean",
     "photos for every recipe,quick meals,healthy,family friendly"),
    ("Books > Nonfiction > Travel Guides", "travel guide,guidebook,travel book", 20,
     "format=@cover;region=europe,asia,americas,africa",
     "maps included,itineraries,pocket size,updated edition"),
    ("Pet Supplies > Dogs > Dog Food", "dog food,dry dog food,dog kibble", 45,
     "life=@dog;weight=2kg,6kg,12kg",
     "grain free,high protein,chicken,salmon,sensitive stomach"),
    ("Pet Supplies > Dogs > Dog Toys", "dog toy,chew toy,squeaky toy", 12,
     "life=@dog;material=rubber,plush,rope",
     "durable,squeaker,treat dispenser,floats"),
    ("Pet Supplies > Dogs > Dog Leashes", "dog leash,dog lead,retractable leash", 20,
     "length=1.5m,2m,5m;color=@color",
     "reflective,padded handle,retractable,no pull"),
    ("Pet Supplies > Dogs > Dog Beds", "dog bed,orthopedic dog bed,pet bed", 50,
     "size=S,M,L,XL;color=@color",
     "orthopedic,washable cover,non-slip bottom,bolster"),
    ("Pet Supplies > Cats > Cat Food", "cat food,wet cat food,dry cat food", 30,
     "life=@cat;weight=1kg,2kg,4kg",
     "grain free,high protein,tuna,chicken,hairball control"),
    ("Pet Supplies > Cats > Cat Litter", "cat litter,clumping litter,litter", 18,
     "type=clay,silica,tofu,pine;weight=5kg,10kg",
     "odor control,dust free,clumping,flushable"),
    ("Pet Supplies > Cats > Cat Toys", "cat toy,interactive cat toy,teaser wand", 10,
     "type=wand,ball,tunnel,laser",
     "catnip,feathers,interactive,bell"),
    ("Pet Supplies > Cats > Scratching Posts", "scratching post,cat tree,cat scratcher", 45,
     "height=50cm,80cm,120cm;color=@color",
     "sisal rope,platform,hammock,stable base"),
)

# Directed: after buying the first, people look for the second.
_COMPLEMENTS: tuple[tuple[str, str], ...] = (
    ("Smartphones", "Phone Cases"), ("Smartphones", "Screen Protectors"), ("Smartphones", "Chargers"),
    ("Smartphones", "Earbuds"), ("Phone Cases", "Screen Protectors"),
    ("Digital Cameras", "Camera Lenses"), ("Digital Cameras", "Memory Cards"), ("Digital Cameras", "Tripods"),
    ("Camera Lenses", "Tripods"), ("Smartwatches", "Watch Bands"), ("Smartwatches", "Chargers"),
    ("Laptops", "Laptop Bags"), ("Laptops", "Mice"), ("Laptops", "USB Hubs"), ("Laptops", "External Drives"),
    ("Tablets", "Keyboards"), ("Monitors", "Keyboards"), ("Monitors", "Mice"),
    ("Coffee Makers", "Coffee Beans"), ("Coffee Makers", "Coffee Filters"), ("Coffee Beans", "Coffee Filters"),
    ("Frying Pans", "Cutting Boards"), ("Knife Sets", "Cutting Boards"), ("Saucepans", "Frying Pans"),
    ("Duvet Covers", "Pillows"), ("Duvet Covers", "Bed Sheets"), ("Bed Sheets", "Pillows"),
    ("Jeans", "Belts"), ("Jeans", "T-Shirts"), ("Dresses", "Belts"),
    ("Running Shoes", "Socks"), ("Running Shoes", "Shoe Insoles"), ("Trail Shoes", "Socks"),
    ("Boots", "Shoe Cleaners"), ("Sneakers", "Shoe Cleaners"),
    ("Yoga Mats", "Resistance Bands"), ("Dumbbells", "Resistance Bands"), ("Yoga Mats", "Leggings"),
    ("Tents", "Sleeping Bags"), ("Tents", "Camping Stoves"), ("Tents", "Headlamps"),
    ("Bikes", "Bike Helmets"), ("Bikes", "Bike Lights"),
    ("Cleansers", "Moisturizers"), ("Moisturizers", "Sunscreen"), ("Shampoo", "Conditioner"),
    ("Cookbooks", "Knife Sets"), ("Travel Guides", "Laptop Bags"),
    ("Board Games", "Card Games"),
    ("Dog Food", "Dog Toys"), ("Dog Beds", "Dog Toys"), ("Dog Leashes", "Dog Toys"),
    ("Cat Food", "Cat Litter"), ("Cat Food", "Cat Toys"), ("Scratching Posts", "Cat Toys"),
)

_BRANDS = (
    "Voltix Nordwave Aurex Kintaro Zephyra Lumio Corvana Pixly",
    "Bytelane Quorra Stellix Arcadia Netsu Vantor Helio Cobalto",
    "Hearthly Casava Brava Kitchenor Ovella Terrano Lindmark Pomo",
    "Threadline Marlow Urbano Kestrel Nomad&Co Velour Ashby Fenwick",
    "Stridex Pacer Altura Moveo Trekka Sprint9 Cobblestone Lacet",
    "Summitry Ridgeway Peakform Outbound Vireo Kodiak Tread Alpenglow",
    "Lumina Purelle Dermis Velvetine Aqualis Botaniq Glowry Serum&Co",
    "Brickle Funzy Tinkerly Playmoor Gamewright Jolly Kubo Meeple",
    "Inkwell Paperlark Northbound Quillon Folio Lantern Driftwood Harbor",
    "Pawsome Barkley Whisker Furrow Tailwind Kibbles Purrfect Chewie",
)


@dataclass(frozen=True)
class Leaf:
    """One leaf category and the words its items are made of.

    ``attributes`` is a tuple of (dimension name, values); an item takes one value per dimension.
    ``features`` are free phrases; an item takes two. ``price`` is the leaf's median price.
    """

    index: int
    path: str
    top: int
    nouns: tuple[str, ...]
    price: float
    attributes: tuple[tuple[str, tuple[str, ...]], ...]
    features: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.rsplit(" > ", 1)[-1]


@dataclass(frozen=True)
class Vocabulary:
    """The whole shop: leaves, top categories, brands and the complement relation.

    ``brands[t]`` lists the :data:`BRANDS_PER_TOP` brands of top category ``t``;
    ``complements[l]`` the leaf indices people look for after buying from leaf ``l``.
    """

    leaves: tuple[Leaf, ...]
    tops: tuple[str, ...]
    brands: tuple[tuple[str, ...], ...]
    complements: tuple[tuple[int, ...], ...]

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    def complement_pairs(self) -> list[tuple[str, str]]:
        """(from leaf path, to leaf path) of every complement relation."""
        return [(self.leaves[a].path, self.leaves[b].path)
                for a, targets in enumerate(self.complements) for b in targets]


def _parse_attributes(spec: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    dims = []
    for part in spec.split(";"):
        name, values = part.split("=", 1)
        values = _POOLS[values[1:]] if values.startswith("@") else values
        dims.append((name, tuple(v.strip() for v in values.split(","))))
    return tuple(dims)


@cache
def shop_vocabulary() -> Vocabulary:
    """The fixed vocabulary of the synthetic shop (built once, then shared)."""
    tops: list[str] = []
    leaves: list[Leaf] = []
    for path, nouns, price, attrs, features in _LEAVES:
        top = path.split(" > ")[0]
        if top not in tops:
            tops.append(top)
        leaves.append(Leaf(len(leaves), path, tops.index(top), tuple(n.strip() for n in nouns.split(",")),
                           float(price), _parse_attributes(attrs), tuple(f.strip() for f in features.split(","))))
    by_name = {leaf.name: leaf.index for leaf in leaves}
    comps: list[list[int]] = [[] for _ in leaves]
    for a, b in _COMPLEMENTS:
        comps[by_name[a]].append(by_name[b])
    brands = tuple(tuple(line.split()) for line in _BRANDS)
    # invariants of the fixed tables above; a failure here is an edit mistake in this module
    if len(brands) != len(tops) or any(len(b) != BRANDS_PER_TOP for b in brands):
        raise RuntimeError(f"_BRANDS needs {len(tops)} lines of {BRANDS_PER_TOP} names")
    if any(len(leaf.attributes) > MAX_ATTRIBUTES for leaf in leaves) or any(a == b for a, b in _COMPLEMENTS):
        raise RuntimeError(f"each leaf has at most {MAX_ATTRIBUTES} attributes; no leaf complements itself")
    # the generator writes these words into JSON without escaping them
    words = [b for top in brands for b in top]
    for leaf in leaves:
        words += [leaf.path, *leaf.nouns, *leaf.features] + [v for _, vs in leaf.attributes for v in vs]
    if any(not (w.isascii() and w.isprintable()) or '"' in w or "\\" in w for w in words):
        raise RuntimeError("vocabulary words must be printable ASCII without quotes or backslashes")
    for leaf in leaves:  # query grading matches words against tags: a word must name one thing
        words = [v for _, values in leaf.attributes for v in values] + list(leaf.features)
        if len(set(words)) != len(words):
            raise RuntimeError(f"{leaf.path}: an attribute value or feature appears twice")
    return Vocabulary(tuple(leaves), tuple(tops), brands, tuple(tuple(c) for c in comps))
